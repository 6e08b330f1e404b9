"""iptables-restore text in Istio's format (`buildRestore`) and Istio's dry-run transcript."""

from __future__ import annotations

from meshnet.plan.model import BUILTIN_CHAINS, TABLE_ORDER, Family, IptablesPlan, Op

TYPE_CHECKING = False  # collections.abc/typing imports cost ms at pod start: type checkers only
if TYPE_CHECKING:
    from collections.abc import Sequence


def render_restore(ops: Sequence[Op]) -> str:
    """Tables sorted by name, `-N` for chains in order of first use, rules verbatim, `COMMIT`."""
    by_table: dict[str, list[Op]] = {}
    for op in ops:
        by_table.setdefault(op.rule.table, []).append(op)
    out: list[str] = []
    for table in sorted(by_table, key=lambda t: (TABLE_ORDER.index(t) if t in TABLE_ORDER else 99, t)):
        table_ops = by_table[table]
        declared: list[str] = []
        for op in table_ops:
            if op.rule.chain not in BUILTIN_CHAINS and op.rule.chain not in declared:
                declared.append(op.rule.chain)
        for op in table_ops:
            target = op.rule.target
            if target.is_jump_to_chain and target.name not in declared:
                declared.append(target.name)
        out.append(f"* {table}")
        out.extend(f"-N {chain}" for chain in declared)
        out.extend(op.restore_line() for op in table_ops)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render_family(plan: IptablesPlan, family: Family) -> str:
    return render_restore(plan.ops(family))


def render_transcript(plan: IptablesPlan) -> str:
    """What istio-iptables runs on a clean namespace: state checks, restores, final dumps."""
    lines = ["iptables-save", "ip6tables-save", render_family(plan, 4).rstrip("\n")]
    if plan.ipv6:
        lines.append(render_family(plan, 6).rstrip("\n"))
    lines.append("iptables-save")
    if plan.ipv6:
        lines.append("ip6tables-save")
    return "\n".join(line for line in lines if line) + "\n"
