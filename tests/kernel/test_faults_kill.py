"""kill -9 at random points during apply and during reconcile, on every backend (issue 10, defect 1).

Before: SIGKILL once Istio's DROP guardrails were in filter (~100 ms into `apply --reconcile`) left
`-A INPUT/FORWARD/OUTPUT -p tcp|udp -j DROP` for good: every connection timed out, status said
in sync, a second --reconcile and cleanup left them. Now the guardrails and the swap are one
restore per family, started detached with their whole payload, so no kill point leaves them.

Per backend: the duration of an uninterrupted run is measured, then the writer (a forked copy of
this process, so a kill point is not lost in interpreter start-up) is SIGKILLed at random points
spread over that duration (a fixed count; half of the kills hit its whole process group). After
each kill, once the namespace lock is free (a restore that outlived the writer holds it), real TCP
in both families and directions must land either where the rules send it or where it was going,
never time out; no guardrail may be left; status must not call a half state in sync. Regularly,
and at the end, apply / reconcile / cleanup must repair the state exactly (routing included).
"""

from __future__ import annotations

import functools
import os
import random
import select
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from harness.fault_helpers import ALL_BACKENDS, REDIRECT, TPROXY, assert_exactly, guardrails_left, make_spec, traffic
from harness.topology import Topology

from meshnet.apply.applier import apply_spec, cleanup, status
from meshnet.apply.backends.nslock import locked
from meshnet.spec.spec import Spec

pytestmark = pytest.mark.netns
# Kill points per backend and operation: 10 x 5 backends = 50 during apply and 50 during reconcile
# (about a minute on 2 busy CPUs); MESHNET_FAULT_KILLS=50 gives 50 per backend and operation.
KILLS = int(os.environ.get("MESHNET_FAULT_KILLS", "10"))
REPAIR_EVERY = 5
SEED = int(os.environ.get("MESHNET_FAULT_SEED", time.time_ns() % 100000))


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with Topology() as topo:
        topo.start_server(topo.pod, "proxy", tcp_ports=(15001, 15006), uid=1337, transparent=True)
        topo.start_server(topo.pod, "app", tcp_ports=(8080,), uid=1000)
        topo.start_server(topo.peer, "peer", tcp_ports=(8080,))
        yield topo


def assert_not_blackholed(topo: Topology, where: str) -> dict[str, str]:
    landed = traffic(topo)
    for key, name in landed.items():
        ok = ("peer", "proxy") if key.startswith("out") else ("app", "proxy")
        assert name in ok, f"{where}: {key} -> {name} ({landed})"
    assert guardrails_left(topo.pod) == [], where
    return landed


def run_killed(job: Callable[[], object], delay: float, group: bool) -> bool:
    """Run job in a forked process, SIGKILL it (or its process group) after `delay`; True if killed."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            if group:
                os.setpgid(0, 0)
            select.select([go_r], [], [])
            job()
        finally:
            os._exit(0)
    os.close(go_r)
    if group:
        try:
            os.setpgid(pid, pid)  # both sides set it: no race with the child's exec of nothing
        except OSError:
            pass
    os.write(go_w, b"go")
    os.close(go_w)
    time.sleep(delay)
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, st = os.waitpid(pid, 0)
    return os.WIFSIGNALED(st)


def _measure(job: Callable[[], object], reset: Callable[[], object]) -> float:
    reset()
    job()  # in this process first: the forked writers inherit its imports (pyroute2, parsers ...)
    times = []
    for _ in range(2):
        reset()
        start = time.monotonic()
        _run_plain(job)
        times.append(time.monotonic() - start)
    return min(times)


def _run_plain(job: Callable[[], object]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            job()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _after_kill(topo: Topology, spec: Spec, where: str) -> bool:
    """Checks after one kill; True when status calls the state in sync with `spec`."""
    with locked(topo.pod):  # a detached restore that outlived the writer holds the lock until it is done
        pass
    landed = assert_not_blackholed(topo, where)
    st = status(topo.pod, spec)
    if st.drift == ():  # status says complete: then traffic is intercepted as designed
        assert landed == {"out4": "proxy", "in4": "proxy", "out6": "proxy", "in6": "proxy"}, (where, landed)
    return st.drift == ()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_kill_during_apply_never_blackholes(lab: Topology, backend: str) -> None:
    pod = lab.pod
    spec = make_spec(TPROXY, pod)
    rng = random.Random(f"{SEED}-apply-{backend}")
    duration = _measure(lambda: apply_spec(pod, spec, backend=backend), lambda: cleanup(pod))
    killed = in_sync = 0
    for i in range(KILLS):
        cleanup(pod)  # repair by cleanup before every kill point
        if i % REPAIR_EVERY == 1:
            assert_exactly(pod, None, backend)
        delay = rng.uniform(0, duration * 1.1)
        killed += run_killed(lambda: apply_spec(pod, spec, backend=backend), delay, group=bool(i % 2))
        in_sync += _after_kill(lab, spec, f"seed {SEED} apply kill {i} at {delay * 1000:.0f} ms")
        if i % REPAIR_EVERY == REPAIR_EVERY - 1:
            apply_spec(pod, spec, backend=backend)  # repair by a plain apply
            assert_exactly(pod, spec, backend)
    print(f"[{backend}] apply: {KILLS} kill points over {duration * 1000:.0f} ms, seed {SEED}: "
          f"{killed} killed mid-run, {in_sync} found complete")
    assert killed >= KILLS // 3, "most kill points fell after the run: the spread is wrong"
    apply_spec(pod, spec, backend=backend, reconcile=True)
    assert_exactly(pod, spec, backend)
    cleanup(pod)
    assert_exactly(pod, None, backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_kill_during_reconcile_never_blackholes(lab: Topology, backend: str) -> None:
    pod = lab.pod
    specs = (make_spec(TPROXY, pod), make_spec(REDIRECT, pod))
    rng = random.Random(f"{SEED}-reconcile-{backend}")
    cleanup(pod)
    apply_spec(pod, specs[1], backend=backend)
    duration = _measure(lambda: apply_spec(pod, specs[0], backend=backend, reconcile=True),
                        lambda: apply_spec(pod, specs[1], backend=backend, reconcile=True))
    killed = 0
    for i in range(KILLS):
        target = specs[i % 2]
        delay = rng.uniform(0, duration * 1.1)
        killed += run_killed(functools.partial(apply_spec, pod, target, backend=backend, reconcile=True), delay,
                             group=bool((i // 2) % 2))
        _after_kill(lab, target, f"seed {SEED} reconcile kill {i} at {delay * 1000:.0f} ms")
        if i % REPAIR_EVERY == REPAIR_EVERY - 1:
            if (i // REPAIR_EVERY) % 2:  # repair by cleanup + apply
                cleanup(pod)
                assert_exactly(pod, None, backend)
                apply_spec(pod, target, backend=backend)
            else:  # repair by reconcile
                apply_spec(pod, target, backend=backend, reconcile=True)
            assert_exactly(pod, target, backend)
    print(f"[{backend}] reconcile: {KILLS} kill points over {duration * 1000:.0f} ms, seed {SEED}: "
          f"{killed} killed mid-run")
    assert killed >= KILLS // 3, "most kill points fell after the run: the spread is wrong"
    for spec in specs:
        apply_spec(pod, spec, backend=backend, reconcile=True)
        assert_exactly(pod, spec, backend)
    cleanup(pod)
    assert_exactly(pod, None, backend)
