"""Conntrack findings: the conntrack analyzer's (collisions, table pressure) plus INVALID packets
counted while nothing drops them (out-of-window packets that bypass the NAT of their connection)."""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.rules_info import facts

_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def _evidence(ev: dict[str, object]) -> str:
    return str(ev.get("text") or ev)


def run(ctx: Context) -> list[Finding]:
    snap = ctx.conntrack
    if snap is None:
        if ctx.conntrack_error:
            ctx.notes.append(f"conntrack not inspected: {ctx.conntrack_error}")
        return []
    from meshnet.diagnose.conntrack.findings import analyze

    out = [Finding(f.kind, _SEVERITY.get(f.severity, "warning"), f.summary, [_evidence(e) for e in f.evidence],
                   "; ".join(f.actions)) for f in analyze(snap)]
    invalid = snap.stat_total("invalid")
    drop_rules = facts(ctx.live).drop_invalid
    if invalid and not drop_rules:
        out.append(Finding(
            "invalid-packets", "warning",
            f"conntrack counted {invalid} INVALID packets and no rule drops them: such packets skip the "
            "connection's NAT, so they can reach the app directly or reset the proxied connection",
            [f"conntrack stat invalid={invalid} (summed over CPUs)", "no `ctstate INVALID -j DROP` rule"],
            "enable drop-invalid (istio-iptables --drop-invalid / INVALID_DROP=true) so INVALID packets are dropped"))
    return out
