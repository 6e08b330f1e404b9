"""`meshnet doctor`: read a pod's namespace once, run every check, report findings.

Exit status: 0 healthy (info findings allowed), 1 at least one warning/critical finding,
2 the namespace could not be inspected. Everything here only reads: the pod's namespace and,
for the backend comparison, the host's (iptables-nft-save and /proc reads only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.apply.netns import Netns, NetnsError
from meshnet.diagnose.checks import Context, Finding
from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from collections.abc import Callable

    from meshnet.diagnose.conntrack.snapshot import Snapshot
    from meshnet.spec.spec import Spec

EXIT_HEALTHY, EXIT_FINDINGS, EXIT_CANNOT_INSPECT = 0, 1, 2


class CannotInspect(MeshnetError):
    exit_code = EXIT_CANNOT_INSPECT


@dataclass
class Report:
    netns: str
    backends: list[str]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mode: str | None = None  # REDIRECT / TPROXY from the live rules; None without capture rules

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.problems else EXIT_HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "backends": self.backends, "mode": self.mode, "healthy": not self.problems,
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
    from meshnet.diagnose.checks import (
        backends_check,
        capture_probes,
        collision_prevention,
        conntrack_check,
        dns_listener,
        dns_zones,
        drift,
        listeners,
        no_rules,
        proxy_owner,
        tproxy_routing,
    )
    from meshnet.diagnose.checks.half_states import HALF_STATE_CHECKS

    # capture_probes before drift: without a spec, a failed probe's finding carries the structural holes.
    return [no_rules, backends_check, capture_probes, drift, tproxy_routing, *HALF_STATE_CHECKS, dns_zones,
            listeners, dns_listener, proxy_owner, conntrack_check, collision_prevention]


def _mode(live: Any) -> str | None:
    from meshnet.diagnose.checks.rules_info import facts

    f = facts(live)
    return "TPROXY" if f.tproxy_marks else "REDIRECT" if f.captures else None


def diagnose(netns: Netns | Any, spec: Spec | None = None, host: Netns | Any | None = None,
             conntrack: Callable[[], Snapshot] | None = None) -> Report:
    """Read `netns` once and run every check. `netns` is any namespace source (see
    meshnet.diagnose.bundle.source): a live Netns, a Recorder while collecting a bundle, or a bundle's
    Replay; `conntrack` reads the conntrack snapshot (default: live, over netlink)."""
    from meshnet.state.live import read_live

    live = read_live(netns)
    readable = bool(live.xtables) or live.nft is not None
    if not readable:
        raise CannotInspect(f"cannot read any rules in {netns.label}: " + "; ".join(live.errors))
    ctx = Context(netns, live, spec=spec, host=host)
    ctx.notes += live.errors
    from meshnet.diagnose.conntrack.netlink import NetlinkError

    if conntrack is None:
        from meshnet.diagnose.conntrack.snapshot import collect_live

        def conntrack() -> Snapshot:
            return collect_live(netns)

    try:
        ctx.conntrack = conntrack()
    except (MeshnetError, OSError, NetlinkError) as exc:
        ctx.conntrack_error = str(exc)
    report = Report(netns.label, live.istio_backends(), mode=_mode(live))
    offline = not isinstance(netns, Netns)
    for check in _checks():
        try:
            report.findings += check.run(ctx)
        except NetnsError as exc:
            if not offline:
                raise
            ctx.notes.append(f"{check.__name__.rsplit('.', 1)[-1]} not checked: {exc}")
    from meshnet.ambient.wording import is_ambient, ztunnel_words

    if is_ambient(live):  # an ambient pod's proxy is the node's ztunnel: findings say so
        for f in report.findings:
            f.summary, f.fix = ztunnel_words(f.summary), ztunnel_words(f.fix)
            f.evidence = [ztunnel_words(e) for e in f.evidence]
    report.notes = ctx.notes
    order = {"critical": 0, "warning": 1, "info": 2}
    report.findings.sort(key=lambda f: order.get(f.severity, 3))
    return report
