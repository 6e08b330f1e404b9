"""The applier's state machine against a stub Backend (no root, no kernel): every decision once.

The kernel layer (test_applier_*.py, test_faults_*.py) proves each real backend does what the
protocol says; here only the decisions are under test: fresh -> write, same -> no-op (+ repairs),
drift -> error naming it, or reconcile when asked, --force-apply never over existing chains.
"""

from __future__ import annotations

import pytest

from meshnet.apply.applier import run
from meshnet.apply.backends import routing
from meshnet.apply.backends.base import Live
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError
from meshnet.spec.flags import parse_istio_args

SPEC = parse_istio_args(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*"], {})[0]
POD = Netns(path="/nonexistent/stub", label="stub-pod")


class StubBackend:
    name = "stub"

    def __init__(self, live: Live, fast: bool = False, repairs: list[str] | None = None,
                 routing_changes: bool = False) -> None:
        self.live = live
        self.fast = fast
        self.repairs = repairs or []
        self.routing_changes = routing_changes
        self.calls: list[str] = []

    def fast_write(self, netns: Netns, spec: object) -> bool:
        self.calls.append("fast_write")
        return self.fast

    def applied(self, netns: Netns, spec: object) -> str:
        return "applied by stub"

    def read(self, netns: Netns, spec: object) -> Live:
        self.calls.append("read")
        return self.live

    def write(self, netns: Netns, spec: object, live: Live) -> str:
        self.calls.append("write")
        return "written"

    def reconcile(self, netns: Netns, spec: object, live: Live) -> str:
        self.calls.append("reconcile")
        return "reconciled"

    def repair(self, netns: Netns, spec: object, live: Live) -> list[str]:
        self.calls.append("repair")
        return self.repairs

    def cleanup(self, netns: Netns, marks: set[int] | None = None, spec: object = None) -> list[str]:
        self.calls.append("cleanup")
        return []

    def ensure_routing(self, netns: Netns, spec: object) -> routing.Changes:
        self.calls.append("ensure_routing")
        return routing.Changes(passthrough_v6=self.routing_changes)

    def remove_stale_routing(self, netns: Netns, spec: object) -> int:
        self.calls.append("remove_stale_routing")
        return 0


def test_fast_write_short_circuits() -> None:
    b = StubBackend(Live(False), fast=True)
    result = run(POD, SPEC, b)
    assert result.changed and result.message == "applied by stub" and b.calls == ["fast_write"]


def test_fresh_pod_is_written() -> None:
    b = StubBackend(Live(False))
    result = run(POD, SPEC, b)
    assert (result.changed, result.message) == (True, "written")
    assert b.calls == ["fast_write", "read", "write"]


def test_no_fast_path_when_told() -> None:
    b = StubBackend(Live(False), fast=True)
    run(POD, SPEC, b, fast=False)
    assert "fast_write" not in b.calls


def test_same_spec_is_a_noop_that_still_repairs() -> None:
    b = StubBackend(Live(True, []))
    result = run(POD, SPEC, b)
    assert not result.changed and "no change" in result.message
    assert b.calls == ["fast_write", "read", "repair", "ensure_routing", "remove_stale_routing"]
    repaired = run(POD, SPEC, StubBackend(Live(True, []), repairs=["-D INPUT -p tcp -j DROP"]))
    assert repaired.changed and "removed leftover DROP guardrails" in repaired.message
    routed = run(POD, SPEC, StubBackend(Live(True, []), routing_changes=True))
    assert routed.changed and "restored missing routing" in routed.message


def test_drift_without_reconcile_is_a_clear_error() -> None:
    drift = [f"- iptables nat ISTIO_OUTPUT rule {i}" for i in range(7)]
    b = StubBackend(Live(True, drift))
    with pytest.raises(ApplyError) as err:
        run(POD, SPEC, b)
    text = str(err.value)
    assert "differ from the spec" in text and "--reconcile" in text and "(2 more)" in text and "\n" not in text
    assert "write" not in b.calls and "reconcile" not in b.calls


def test_drift_with_reconcile_reconciles() -> None:
    b = StubBackend(Live(True, ["- x"]))
    assert run(POD, SPEC, b, reconcile=True).message == "reconciled"
    assert b.calls[-1] == "reconcile" and "write" not in b.calls


def test_force_apply_never_writes_over_existing_chains() -> None:
    b = StubBackend(Live(True, []))
    with pytest.raises(ApplyError, match="--force-apply cannot write over them"):
        run(POD, SPEC, b, force=True)
    assert "write" not in b.calls
    b = StubBackend(Live(True, []))
    assert run(POD, SPEC, b, force=True, reconcile=True).message == "reconciled"
