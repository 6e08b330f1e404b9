"""Leftover reconcile guardrails: the pod is blackholed.

istio-iptables `--reconcile` inserts `-t filter -I INPUT|FORWARD|OUTPUT 1 -p tcp|udp -j DROP`
(six rules per family) while it swaps the rules, and removes them in a `defer`. A run killed in
between leaves them: every TCP and UDP packet of the pod is dropped, while the nat/mangle rules
look perfectly fine. Only this exact shape counts (a bare protocol match, DROP, in a builtin
filter chain): a user's own filter rules with any further match are not guardrails.
"""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT
from meshnet.diagnose.checks import Context, Finding
from meshnet.plan.model import Match, Rule, Target
from meshnet.state.live import LiveState

GUARDED_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
GUARD_PROTOS = ("tcp", "udp")
_DROP = Target("DROP")


def is_guardrail(rule: Rule) -> bool:
    """A rule in the exact shape Istio's reconcile guardrails have."""
    return (rule.table == "filter" and rule.chain in GUARDED_CHAINS and rule.target == _DROP
            and len(rule.matches) == 1 and rule.matches[0] in {Match("proto", p) for p in GUARD_PROTOS})


def leftover_guardrails(live: LiveState) -> list[str]:
    """`BACKEND vFAM -t filter -A CHAIN -p PROTO -j DROP` for each guardrail found."""
    out: list[str] = []
    for backend in (LEGACY, NFT):
        for fam, rs in sorted(live.xtables.get(backend, {}).items()):
            for chain in GUARDED_CHAINS:
                out += [f"{backend} v{fam} -t filter {r}" for r in rs.rules("filter", chain) if is_guardrail(r)]
    return out


def run(ctx: Context) -> list[Finding]:
    found = leftover_guardrails(ctx.live)
    if not found:
        return []
    chains = sorted({line.split(" -A ", 1)[1].split(" ", 1)[0] for line in found})
    return [Finding(
        "leftover-guardrails", "critical",
        f"pod blackholed: {len(found)} DROP guardrail(s) of an interrupted `istio-iptables --reconcile` are still "
        f"in filter {'/'.join(chains)}: every TCP/UDP packet there is dropped",
        found,
        "run `meshnet apply --reconcile` (or `meshnet cleanup`) in the pod's namespace, which removes them; or "
        "delete them by hand: iptables -t filter -D CHAIN -p tcp -j DROP (and udp, and ip6tables)")]
