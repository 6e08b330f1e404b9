"""Doctor checks: one module per root cause, each `run(ctx) -> list[Finding]`.

A finding names one root cause with its evidence and a fix. Severity is critical (traffic is
not intercepted as intended), warning (it is, but something will bite), or info (context, not a
problem: it never makes doctor fail).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.diagnose.conntrack.snapshot import Snapshot
    from meshnet.spec.spec import Spec
    from meshnet.state.live import LiveState

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Finding:
    kind: str
    severity: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "summary": self.summary,
                "evidence": self.evidence, "fix": self.fix}

    @property
    def is_problem(self) -> bool:
        return self.severity != "info"


@dataclass
class Context:
    netns: Netns
    live: LiveState
    spec: Spec | None = None  # the expected spec, IPv6 already decided from the pod's addresses
    host: Netns | None = None  # namespace whose backend is "the host's" (read only)
    conntrack: Snapshot | None = None
    conntrack_error: str | None = None
    notes: list[str] = field(default_factory=list)
    structure_explained: bool = False  # a capture probe failed and its finding carries the structural holes
