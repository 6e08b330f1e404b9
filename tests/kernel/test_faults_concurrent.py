"""20 concurrent writers into one namespace (issue 10, defect 2), on every backend, dual stack + TPROXY.

Before the writer lock: 2-4 of 20 identical applies exited 0, the rest "Chain already exists;
rollback incomplete", the final state usually had no ISTIO chain (or mangle only with a duplicate
jump), and TPROXY ip rules and an orphan IPv6 `fwmark 0x539 lookup 133` stayed. Now every writer
takes the namespace's lock (flock on its nsfs inode), so they serialise: the final state is
exactly one spec (or clean), complete in both families, routing included, and every writer ends
with success or one clear line.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness.fault_helpers import ALL_BACKENDS, REDIRECT, TPROXY, Outcome, assert_exactly, make_spec, run_forked
from harness.topology import Topology

from meshnet.apply.applier import apply_spec, cleanup
from meshnet.apply.netns import Netns
from meshnet.spec.spec import Spec

pytestmark = pytest.mark.netns
WRITERS = 20


@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        yield topo.pod


def _ok(outcomes: list[Outcome]) -> None:
    bugs = [o.line for o in outcomes if o.code == 3]
    assert bugs == [], bugs[0]
    for o in outcomes:
        assert "\n" not in o.line.strip(), o.line


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_same_spec_twenty_times(pod: Netns, backend: str) -> None:
    spec = make_spec(TPROXY, pod)
    assert spec.enable_ipv6 and spec.tproxy

    def job() -> str:
        return apply_spec(pod, spec, backend=backend).message

    outcomes = run_forked([job] * WRITERS)
    _ok(outcomes)
    assert [o.code for o in outcomes] == [0] * WRITERS, [o.line for o in outcomes if o.code]
    assert sum("already applied" not in o.line for o in outcomes) == 1, [o.line for o in outcomes]
    assert_exactly(pod, spec, backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_different_specs_first_wins_others_report_drift(pod: Netns, backend: str) -> None:
    specs = [make_spec(TPROXY if i % 2 else REDIRECT, pod) for i in range(WRITERS)]
    jobs = [lambda s=s: apply_spec(pod, s, backend=backend).message for s in specs]
    outcomes = run_forked(jobs)
    _ok(outcomes)
    first = min(range(WRITERS), key=lambda i: outcomes[i].finished)
    for i, o in enumerate(outcomes):
        if specs[i] == specs[first]:
            assert o.code == 0, o.line
        else:
            assert o.code == 1 and "differ from the spec" in o.line and "--reconcile" in o.line, o.line
    assert_exactly(pod, specs[first], backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_different_specs_with_reconcile_and_cleanup_interleaved(pod: Netns, backend: str) -> None:
    """Writers alternate TPROXY / REDIRECT with --reconcile, every fourth is a cleanup: the last one wins."""
    tproxy, redirect = make_spec(TPROXY, pod), make_spec(REDIRECT, pod)
    plan: list[Spec | None] = [None if i % 4 == 3 else (tproxy if i % 2 else redirect) for i in range(WRITERS)]

    def job(spec: Spec | None) -> str:
        if spec is None:
            return cleanup(pod).message
        return apply_spec(pod, spec, backend=backend, reconcile=True).message

    outcomes = run_forked([functools.partial(job, s) for s in plan])
    _ok(outcomes)
    assert [o.code for o in outcomes] == [0] * WRITERS, [o.line for o in outcomes if o.code]
    last = max(range(WRITERS), key=lambda i: outcomes[i].finished)
    assert_exactly(pod, plan[last], backend)  # TPROXY last: its routing; else none (no orphan 0x539 rule)


def test_cli_writers_exit_zero_or_one_clear_line(pod: Netns) -> None:
    """Real `meshnet apply` processes (8; the forked tests above run 20): exit 0, or 1 and one line."""
    def cmd(flags: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "meshnet.cli.main", "apply", "--netns", pod.label, *flags]

    procs = [subprocess.Popen(cmd(TPROXY if i % 3 else REDIRECT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL) for i in range(8)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code in (0, 1), (code, out, err)
        text = out if code == 0 else err
        assert len(text.strip().splitlines()) == 1 and "Traceback" not in err, (code, out, err)
    fresh = [out for code, out, _ in results if code == 0 and "already" not in out]
    assert len(fresh) == 1, results
    drift = [err for code, _, err in results if code == 1]
    assert all("differ from the spec" in err for err in drift), drift


def test_lock_serialises_across_mount_namespaces(pod: Netns) -> None:
    """A holder in another mount namespace with a private /run (like istio-init) makes a writer wait."""
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"exec 9<{pod.path}; mount -t tmpfs none /run && flock -x 9 && echo held && exec sleep 30"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        from meshnet.apply.backends.nslock import locked
        from meshnet.errors import ApplyError

        with pytest.raises(ApplyError, match="another writer has held the namespace lock"), locked(pod, wait=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()
    spec = make_spec(REDIRECT, pod)
    assert apply_spec(pod, spec).changed
