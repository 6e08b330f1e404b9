"""nft -f text of one atomic transaction, in Istio's format."""

from __future__ import annotations

from meshnet.plan.nft_model import LAYOUTS, TABLE_PREFIX, NftPlan


def render_nft(plan: NftPlan) -> str:
    out: list[str] = []
    prefix, base_chains, regular_chains = LAYOUTS[plan.layout]
    for table in plan.tables():
        name = f"inet {prefix}{table}"
        ops = [op for op in plan.ops if op.rule.table == table]
        used = {op.rule.chain for op in ops} | {t for op in ops if (t := op.rule.jump_target)}
        out.append(f"add table {name}")
        out.append(f"flush table {name}")
        for chain, ctype, hook, prio in base_chains[table]:
            if chain in used:
                out.append(f"add chain {name} {chain} {{ type {ctype} hook {hook} priority {prio} ; }}")
        for chain in regular_chains[table]:
            if chain in used:
                out.append(f"add chain {name} {chain}")
        counts: dict[str, int] = {}
        for op in ops:
            chain = op.rule.chain
            n = counts.get(chain, 0)
            # nft can only insert before an existing rule; past the end Istio appends instead.
            if op.index is None or op.index >= n:
                out.append(f"add rule {name} {chain} {op.rule.body()}")
            else:
                out.append(f"insert rule {name} {chain} index {op.index} {op.rule.body()}")
            counts[chain] = n + 1
    return "\n".join(out) + "\n" if out else ""


def render_nft_cleanup(prefix: str = TABLE_PREFIX) -> str:
    """Delete every Istio table; `add` first so deleting a missing table is not an error."""
    out = []
    for table in ("nat", "mangle", "raw"):
        out.append(f"add table inet {prefix}{table}")
        out.append(f"delete table inet {prefix}{table}")
    return "\n".join(out) + "\n"
