"""Leftover DROP guardrails in Istio's exact shape (issue 10, defect 1): detected and removed.

An interrupted Istio (or old meshnet) reconcile leaves `-A INPUT|FORWARD|OUTPUT -p tcp|udp -j DROP`
per family, 6 more per interrupted run. The reproduction: plant two such sets in both families of
a programmed pod (every connection then times out), then a re-apply, `--reconcile` (same or
another spec) and `cleanup` each remove every complete set and traffic flows again. A single
`-p tcp -j DROP` of the user's is not a guardrail set and stays. Unit tests of the detection and
of the one-restore swap payload need no root.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.fault_helpers import REDIRECT, TPROXY, assert_exactly, guardrails_left, make_spec, traffic
from harness.topology import Topology, is_root

from meshnet.apply.applier import apply_spec, cleanup
from meshnet.apply.backends import guardrails
from meshnet.apply.backends.xt_cleanup import plan_removal
from meshnet.apply.backends.xt_swap import swap_payload
from meshnet.apply.netns import Netns
from meshnet.spec.spec import Spec
from meshnet.state.parse_save import parse_save

SAVE_WITH_TWO_SETS = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[3:180] -A INPUT -p udp -j DROP
-A INPUT -p tcp -j DROP
-A INPUT -p udp -j DROP
-A INPUT -p tcp -j DROP
-A FORWARD -p udp -j DROP
-A FORWARD -p tcp -j DROP
-A FORWARD -p udp -j DROP
-A FORWARD -p tcp -j DROP
-A OUTPUT -p udp -j DROP
-A OUTPUT -p tcp -j DROP
-A OUTPUT -p udp -j DROP
-A OUTPUT -p tcp -j DROP
-A OUTPUT -p tcp -j DROP
COMMIT
"""


def test_detection_counts_complete_sets_only() -> None:
    assert guardrails.count_sets(SAVE_WITH_TWO_SETS) == 2  # the third OUTPUT tcp DROP is not a set
    assert len(guardrails.find_guardrails(SAVE_WITH_TWO_SETS)) == 12
    assert guardrails.guardrails_in(parse_save(SAVE_WITH_TWO_SETS.replace("[3:180] ", ""), 4)) == \
        guardrails.find_guardrails(SAVE_WITH_TWO_SETS)
    one_rule = "*filter\n-A INPUT -p tcp -j DROP\nCOMMIT\n"
    assert guardrails.find_guardrails(one_rule) == [] and guardrails.removal_text(one_rule) == ""
    nat_only = SAVE_WITH_TWO_SETS.replace("*filter", "*nat")
    assert guardrails.count_sets(nat_only) == 0
    assert guardrails.removal_text(SAVE_WITH_TWO_SETS).count("-D ") == 12


def test_swap_payload_guards_every_table_and_ends_unguarded() -> None:
    from meshnet.plan.istio_builder import build_iptables
    from meshnet.plan.render_restore import render_family
    from meshnet.spec.spec import Spec

    spec = make_spec_offline()
    old = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n" \
          "-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n"
    payload = swap_payload(plan_removal(old, 4), render_family(build_iptables(spec), 4), leftover_sets=1)
    blocks = payload.split("COMMIT\n")[:-1]
    assert blocks[0] == guardrails.insert_text().replace("COMMIT\n", "")
    assert blocks[-1].startswith("*filter\n" + "\n".join(guardrails.delete_lines(1)))
    assert blocks[-1].count("-D ") == 12  # ours, then the earlier run's leftover set
    nat = next(b for b in blocks if b.startswith("*nat"))
    assert nat.index("-D OUTPUT 1") < nat.index("-X ISTIO_OUTPUT") < nat.index("-N ISTIO_OUTPUT")
    assert isinstance(spec, Spec)


def make_spec_offline() -> Spec:
    from meshnet.spec.flags import parse_istio_args

    return parse_istio_args(list(TPROXY), {})[0]


# ------------------------------------------------------------------------------------ real kernel
@pytest.fixture
def lab() -> Iterator[Topology]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    with Topology() as topo:
        topo.start_server(topo.pod, "proxy", tcp_ports=(15001, 15006), uid=1337, transparent=True)
        topo.start_server(topo.pod, "app", tcp_ports=(8080,), uid=1000)
        topo.start_server(topo.peer, "peer", tcp_ports=(8080,))
        yield topo


def plant(ns: Netns, backend: str, sets: int = 2) -> None:
    """What `sets` SIGKILLed Istio reconciles leave: the guardrails of each, in both families."""
    variant = "legacy" if backend in ("iptables-legacy", "iptc") else "nft"
    for tool in (f"iptables-{variant}-restore", f"ip6tables-{variant}-restore"):
        for _ in range(sets):
            ns.run([tool, "--noflush"], input=guardrails.insert_text())


def blackholed(topo: Topology) -> bool:
    # DROP: no answer at all (0.5 s is plenty in two namespaces on one host; refused would be instant)
    return all(v == "error: TimeoutError" for v in traffic(topo, timeout=0.5).values())


@pytest.mark.netns
@pytest.mark.parametrize("backend", ("iptables-legacy", "iptables-nft", "iptc", "auto"))
def test_leftover_guardrails_are_removed_by_apply_reconcile_and_cleanup(lab: Topology, backend: str) -> None:
    pod = lab.pod
    tproxy, redirect = make_spec(TPROXY, pod), make_spec(REDIRECT, pod)
    apply_spec(pod, tproxy, backend=backend)
    for repair in ("apply", "reconcile-same", "reconcile-other", "cleanup"):
        plant(pod, backend)
        assert len(guardrails_left(pod)) == 24 and blackholed(lab), repair  # the reproduction: a dead pod
        if repair == "apply":
            result = apply_spec(pod, tproxy, backend=backend)
            assert result.changed and "leftover DROP guardrails" in result.message, result
            want = tproxy
        elif repair == "reconcile-same":
            apply_spec(pod, tproxy, backend=backend, reconcile=True)
            want = tproxy
        elif repair == "reconcile-other":
            apply_spec(pod, redirect, backend=backend, reconcile=True)
            want = redirect
        else:
            removed = cleanup(pod).removed
            assert sum("-j DROP" in line for line in removed) == 24, removed
            want = None
        assert guardrails_left(pod) == [], repair
        assert not blackholed(lab), repair
        assert_exactly(pod, want, backend)
        if want is None:
            apply_spec(pod, tproxy, backend=backend)


@pytest.mark.netns
def test_a_users_single_drop_rule_is_not_a_guardrail(lab: Topology) -> None:
    pod = lab.pod
    apply_spec(pod, make_spec(REDIRECT, pod), backend="iptables-nft")
    pod.run(["iptables-nft", "-t", "filter", "-A", "OUTPUT", "-p", "tcp", "-j", "DROP"])
    cleanup(pod)
    rules = pod.run(["iptables-nft-save", "-t", "filter"]).stdout
    assert "-A OUTPUT -p tcp -j DROP" in rules
