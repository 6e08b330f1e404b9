"""Native nftables: Istio's `inet istio-proxy-*` tables, one atomic `nft -f -` transaction per run.

Semantic difference to keep in mind: nft `tproxy` *falls through* to the next rule when no
transparent socket matches, where xt `TPROXY` *drops* the packet (measured in python-deps.md):
with no proxy listening, an inbound connection is refused under nft and times out under iptables.
"""

from __future__ import annotations

from collections import Counter

from meshnet.apply.netns import Netns, NetnsError
from meshnet.errors import ApplyError
from meshnet.plan.nft_model import NFT_TABLES, TABLE_PREFIX, NftPlan
from meshnet.state.parse_nft import NftRuleset, nft_key, parse_nft_json

TIMEOUT_SECONDS = 60.0


def _nft(netns: Netns, argv: list[str], text: str | None = None) -> str:
    try:
        cp = netns.run(["nft", *argv], input=text, timeout=TIMEOUT_SECONDS, check=False)
    except NetnsError as exc:
        raise ApplyError(str(exc)) from None
    if cp.returncode != 0:
        from meshnet.apply import caps

        why = caps.explain("nft", [caps.NET_ADMIN]) if caps.denied(cp.stderr) else None
        if why:
            raise ApplyError(f"[{netns.label}] {why}")
        lines = [ln.strip() for ln in cp.stderr.splitlines() if ln.strip() and not ln.strip().startswith("^")]
        detail = "; ".join(lines[:2]) if lines else f"exit {cp.returncode}"
        raise ApplyError(f"[{netns.label}] nft {' '.join(argv)}: {detail}")
    return cp.stdout


def live(netns: Netns, prefix: str = TABLE_PREFIX) -> NftRuleset:
    """Istio's tables as they are in the kernel (only the inet family is listed)."""
    return parse_nft_json(_nft(netns, ["-j", "list", "ruleset", "inet"]), prefix)


def transaction(netns: Netns, text: str) -> None:
    """One `nft -f -`: the kernel commits all of it or none of it."""
    if text:
        _nft(netns, ["-f", "-"], text)


def cleanup_text(present: NftRuleset, prefix: str = TABLE_PREFIX) -> str:
    """Delete every Istio table that exists (`add` first, so a missing one is not an error)."""
    tables = sorted({t for t, _ in present.chains}, key=lambda t: NFT_TABLES.index(t) if t in NFT_TABLES else 9)
    return "".join(f"add table inet {prefix}{t}\ndelete table inet {prefix}{t}\n" for t in tables)


def drift(plan: NftPlan, present: NftRuleset) -> list[str]:
    """Differences between the plan and the live tables, one line each ('' list = equal)."""
    expected = plan.chain_rules()
    for op in plan.ops:  # a chain only jumped to is declared empty (ambient's ingress-mode prerouting)
        if (target := op.rule.jump_target) is not None:
            expected.setdefault((op.rule.table, target), [])
    lines: list[str] = []
    for key in [*expected, *(k for k in present.chains if k not in expected)]:
        table, chain = key
        where = f"nft inet {plan.prefix}{table} {chain}"
        exp_rules = expected.get(key, [])
        live_rules = present.rules(table, chain)
        if key not in present.chains:
            lines.append(f"~ {where}: missing chain")
        elif key not in expected:
            lines.append(f"~ {where}: extra chain ({len(live_rules)} rules)")
        exp_keys = [nft_key(r) for r in exp_rules]
        live_keys = [nft_key(r) for r in live_rules]
        missing = Counter(exp_keys) - Counter(live_keys)
        extra = Counter(live_keys) - Counter(exp_keys)
        for r in exp_rules:
            if missing[nft_key(r)] > 0:
                missing[nft_key(r)] -= 1
                lines.append(f"- {where}: {r.body()}")
        for r in live_rules:
            if extra[nft_key(r)] > 0:
                extra[nft_key(r)] -= 1
                lines.append(f"+ {where}: {r.body()}")
        if Counter(exp_keys) == Counter(live_keys) and exp_keys != live_keys:
            lines.append(f"~ {where}: same rules, different order")
    return lines
