"""Half states any Istio namespace can be checked for without a spec: the part of doctor that
`meshnet status` runs too (so `status` never says "in sync" for a blackholed pod)."""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding, guardrails, ipv6_uncaptured, tproxy_orphans, tproxy_routing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.spec import Spec

# tproxy_routing (TPROXY rules without routing) is doctor's already; status adds it itself.
HALF_STATE_CHECKS = (guardrails, tproxy_orphans, ipv6_uncaptured)


def half_state_findings(netns: Netns, spec: Spec | None = None) -> tuple[list[Finding], list[str]]:
    """Findings (critical first) and notes of every half-state check, from one read of the namespace."""
    from meshnet.state.live import read_live

    ctx = Context(netns, read_live(netns), spec=spec)
    findings: list[Finding] = []
    for check in (guardrails, tproxy_routing, tproxy_orphans, ipv6_uncaptured):
        findings += check.run(ctx)
    order = {"critical": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order.get(f.severity, 3))
    return findings, ctx.notes
