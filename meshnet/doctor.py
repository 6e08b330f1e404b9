"""`meshnet doctor`: read a pod's namespace once, run every check, report findings.

Exit status: 0 healthy (info findings allowed), 1 at least one warning/critical finding,
2 the namespace could not be inspected. Everything here only reads: the pod's namespace and,
for the backend comparison, the host's (iptables-nft-save and /proc reads only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.checks import Context, Finding
from meshnet.errors import MeshnetError
from meshnet.records import dataclass, field

if TYPE_CHECKING:
    from meshnet.netns import Netns
    from meshnet.spec import Spec

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_CANNOT_INSPECT = 0, 1, 2


class CannotInspect(MeshnetError):
    exit_code = EXIT_CANNOT_INSPECT


@dataclass
class Report:
    netns: str
    backends: list[str]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.problems else EXIT_HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "backends": self.backends, "healthy": not self.problems,
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes}

    def lines(self) -> list[str]:
        head = f"{self.netns}: Istio rules in {', '.join(self.backends) or 'no backend'}"
        out = [head]
        for f in self.findings:
            out.append(f"[{f.severity}] {f.kind}: {f.summary}")
            out += [f"    evidence: {e}" for e in f.evidence]
            if f.fix:
                out.append(f"    fix: {f.fix}")
        out += [f"note: {n}" for n in self.notes]
        out.append("healthy: no findings" if not self.problems else f"{len(self.problems)} finding(s)")
        return out


def _checks() -> list[Any]:
    from meshnet.checks import (
        backends_check,
        capture_probes,
        conntrack_check,
        dns_listener,
        dns_zones,
        drift,
        listeners,
        no_rules,
        proxy_owner,
        tproxy_routing,
    )

    # capture_probes before drift: without a spec, a failed probe's finding carries the structural holes.
    return [no_rules, backends_check, capture_probes, drift, tproxy_routing, dns_zones, listeners, dns_listener,
            proxy_owner, conntrack_check]


def diagnose(netns: Netns, spec: Spec | None = None, host: Netns | None = None) -> Report:
    from meshnet.live import read_live

    live = read_live(netns)
    readable = bool(live.xtables) or live.nft is not None
    if not readable:
        raise CannotInspect(f"cannot read any rules in {netns.label}: " + "; ".join(live.errors))
    ctx = Context(netns, live, spec=spec, host=host)
    ctx.notes += live.errors
    from meshnet.conntrack.netlink import NetlinkError
    from meshnet.conntrack.snapshot import collect_live

    try:
        ctx.conntrack = collect_live(netns)
    except (MeshnetError, OSError, NetlinkError) as exc:
        ctx.conntrack_error = str(exc)
    report = Report(netns.label, live.istio_backends())
    for check in _checks():
        report.findings += check.run(ctx)
    report.notes = ctx.notes
    order = {"critical": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: order.get(f.severity, 3))
    return report
