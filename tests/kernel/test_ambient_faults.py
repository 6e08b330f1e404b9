"""kill -9 during ambient apply / reconcile / cleanup, and concurrent ambient writers (issue 13, "the
same guarantees as sidecar mode"), on iptables-legacy, iptables-nft, iptc and nftables.

Per backend and operation the duration of an uninterrupted run is measured, then the writer (a
forked copy of this process) is SIGKILLed at random points spread over it (half of the kills hit
its whole process group). After each kill, once the namespace lock is free, the namespace (every
iptables table of both variants and families, `nft list ruleset`, ip rules and routes, lo) must be
exactly the old state or exactly the new one; the only other state allowed is the new routing
ahead of the old rules, which re-running the same operation turns into exactly the new state. No
DROP guardrail may ever be left, and the user's own rules (both variants, an nft table) never change.

The three states: nothing, A (DNS capture, IPv6, a virtual interface) and B (ingress mode, IPv4
only), so a reconcile also removes a whole family's rules and its routing.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Iterator

import pytest
from harness.fault_helpers import guardrails_left, run_forked
from harness.topology import Topology
from test_applier_atomicity import add_user_state, snapshot
from test_faults_kill import _measure, run_killed

from meshnet.ambient.apply import apply_ambient, cleanup_ambient
from meshnet.ambient.spec import AmbientSpec
from meshnet.apply.backends.nslock import locked
from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns
BACKENDS = ("iptables-legacy", "iptables-nft", "iptc", "nftables")
A = AmbientSpec(redirect_dns=True, enable_ipv6=True, virtual_interfaces=("eth8",))
B = AmbientSpec(ingress_mode=True, enable_ipv6=False)
# Kill points per backend and operation (3 operations x 4 backends); MESHNET_FAULT_KILLS raises it.
KILLS = int(os.environ.get("MESHNET_FAULT_KILLS", "8"))
SEED = int(os.environ.get("MESHNET_FAULT_SEED", time.time_ns() % 100000))
ROUTING = ("ip -4 rule", "ip -6 rule", "ip -4 route", "ip -6 route")


@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        add_user_state(topo.pod, "iptables-legacy")
        add_user_state(topo.pod, "iptables-nft")  # (and an nft table of the user's)
        yield topo.pod


def _nft_canon(text: str) -> str:
    """`nft list ruleset` with each table's chains/sets sorted: the order nft lists them in is the
    order they were created (a reconcile keeps iptables-nft's base chains, a fresh write makes them
    after its own chains), and has no effect on any packet."""
    out: list[str] = []
    items: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("table "):
            out.append(line)
            items = []
        elif line == "}":
            out += [ln for item in sorted(items) for ln in item] + [line]
        elif line.startswith("\t") and not line.startswith("\t\t") and line != "\t}":
            items.append([line])
        elif line.strip() and items:
            items[-1].append(line)
    return "\n".join(out)


def state(ns: Netns) -> dict[str, str]:
    """snapshot() of test_applier_atomicity (every table, routing, lo), nft chain order aside."""
    snap = snapshot(ns)
    snap["nft"] = _nft_canon(snap["nft"])
    return snap


def _settled(ns: Netns) -> dict[str, str]:
    with locked(ns):  # a detached restore that outlived the writer holds the lock until it is done
        return state(ns)


def _diff_keys(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def _states(ns: Netns, backend: str) -> dict[str, dict[str, str]]:
    cleanup_ambient(ns)
    states = {"none": state(ns)}
    for name, spec in (("A", A), ("B", B)):
        apply_ambient(ns, spec, backend=backend)
        states[name] = state(ns)
        cleanup_ambient(ns)
        assert state(ns) == states["none"], f"cleanup after {name} is not exact"
    return states


def _kill_loop(ns: Netns, backend: str, label: str, reset: Callable[[], object], job: Callable[[], object],
               old: dict[str, str], new: dict[str, str]) -> dict[str, int]:
    rng = random.Random(f"{SEED}-{label}-{backend}")
    duration = _measure(job, reset)
    seen = {"old": 0, "new": 0, "recovered": 0, "killed": 0}
    for i in range(KILLS):
        reset()
        assert state(ns) == old, f"{label}: reset did not give the old state"
        delay = rng.uniform(0, duration * 1.1)
        seen["killed"] += run_killed(job, delay, group=bool(i % 2))
        where = f"seed {SEED} {backend} {label} kill {i} at {delay * 1000:.0f} ms"
        got = _settled(ns)
        assert guardrails_left(ns) == [], where
        if got == old:
            seen["old"] += 1
        elif got == new:
            seen["new"] += 1
        else:
            # Only the routing may be ahead: the rules are exactly the old or the new ones.
            assert _diff_keys(got, old) <= set(ROUTING) or _diff_keys(got, new) <= set(ROUTING), \
                (where, {k: got[k] for k in _diff_keys(got, new)})
            job()
            assert state(ns) == new, f"{where}: re-running did not give exactly the new state"
            seen["recovered"] += 1
    print(f"[{backend}] {label}: {KILLS} kills over {duration * 1000:.0f} ms, seed {SEED}: {seen}")
    assert seen["killed"] >= KILLS // 3, "most kill points fell after the run: the spread is wrong"
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_during_ambient_apply_reconcile_cleanup(pod: Netns, backend: str) -> None:
    states = _states(pod, backend)

    def to(spec: AmbientSpec | None) -> Callable[[], object]:
        if spec is None:
            return lambda: cleanup_ambient(pod)
        return lambda: apply_ambient(pod, spec, backend=backend, reconcile=True)

    _kill_loop(pod, backend, "apply", to(None), lambda: apply_ambient(pod, A, backend=backend),
               states["none"], states["A"])
    _kill_loop(pod, backend, "reconcile", to(A), lambda: apply_ambient(pod, B, backend=backend, reconcile=True),
               states["A"], states["B"])
    _kill_loop(pod, backend, "cleanup", to(B), to(None), states["B"], states["none"])
    cleanup_ambient(pod)
    assert state(pod) == states["none"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_ambient_writers_serialise(pod: Netns, backend: str) -> None:
    """12 writers (apply A, reconcile to B, cleanup) at once: each ends with success or one clear line,
    and the namespace is exactly the state of the last writer that succeeded."""
    states = _states(pod, backend)
    plan: list[AmbientSpec | None] = [None if i % 3 == 2 else (A if i % 2 else B) for i in range(12)]

    def job(spec: AmbientSpec | None) -> str:
        if spec is None:
            return cleanup_ambient(pod).message
        return apply_ambient(pod, spec, backend=backend, reconcile=spec is B).message

    outcomes = run_forked([functools.partial(job, s) for s in plan])
    assert [o.line for o in outcomes if o.code == 3] == []
    for o, spec in zip(outcomes, plan, strict=True):
        assert "\n" not in o.line.strip(), o.line
        if o.code:  # only a plain apply of A over B may be refused, in one line
            assert spec is A and o.code == 1 and "differ from the ambient spec" in o.line, o.line
    last = max((i for i, o in enumerate(outcomes) if o.code == 0), key=lambda i: outcomes[i].finished)
    want = {None: "none", A: "A", B: "B"}[plan[last]]
    assert state(pod) == states[want], (want, [o.line for o in outcomes])
    assert guardrails_left(pod) == []
