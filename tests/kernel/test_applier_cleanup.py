"""cleanup() and side-effect-free detection/status (issue 3, "Safety" and "Backends").

After apply + cleanup, iptables-save and ip6tables-save (legacy and nft), `nft list ruleset`, the
policy rules, every routing table and lo's addresses are exactly as before, for every backend,
whether the namespace was empty or held user rules (one identical to a rule Istio adds). The one
exception is documented in `snapshot`: a legacy table the kernel had to instantiate stays (empty).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.ns_state import DEFAULT, TPROXY_DNS, add_user_state, make_spec, snapshot
from harness.topology import Topology

from meshnet.apply.applier import apply_spec, cleanup, detect_backend, status
from meshnet.apply.backends.xtables import legacy_tables
from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns

BACKENDS = ("iptables-nft", "iptables-legacy", "iptc", "nftables")
SPECS = {"redirect": DEFAULT, "tproxy-dns-everything": TPROXY_DNS + " -o 80 -q 8080 -x 10.0.0.0/8"}


@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        yield topo.pod


@pytest.mark.parametrize("user_rules", (False, True), ids=("empty-ns", "with-user-rules"))
@pytest.mark.parametrize("flags", SPECS.values(), ids=SPECS.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanup_restores_exact_state(pod: Netns, backend: str, flags: str, user_rules: bool) -> None:
    if user_rules:
        add_user_state(pod, backend)
    before = snapshot(pod)
    spec = make_spec(flags, pod, ISTIO_OUTBOUND_OWNER_GROUPS="10,20")
    apply_spec(pod, spec, backend=backend)
    applied = snapshot(pod)
    assert applied != before
    result = cleanup(pod)
    assert result.changed and result.backends
    assert snapshot(pod) == before
    assert status(pod).backends == ()
    assert not cleanup(pod).changed  # nothing left the second time


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_cleanup_removes_istio_rules_written_by_hand(pod: Netns, backend: str) -> None:
    """Config-independent: rules Istio would write for some other config are found by shape."""
    variant = "legacy" if backend == "iptables-legacy" else "nft"
    before = snapshot(pod)
    payload = "\n".join([
        "*mangle", "-N ISTIO_DIVERT", "-A ISTIO_DIVERT -j MARK --set-mark 4242", "-A ISTIO_DIVERT -j ACCEPT",
        "-A PREROUTING -p tcp -m mark --mark 4242 -j CONNMARK --save-mark",
        "-A OUTPUT -p tcp -o lo -m mark --mark 4242 -j RETURN",
        "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 555 -j MARK --set-mark 1338",
        "-A OUTPUT -p tcp -m connmark --mark 4242 -j CONNMARK --restore-mark", "COMMIT",
        "*nat", "-N ISTIO_REDIRECT", "-A PREROUTING -i veth7 -j RETURN", "-A OUTPUT -o veth7 -j RETURN",
        "-I PREROUTING 1 -i kv0 -j RETURN", "-I PREROUTING 1 -i kv0 -j ISTIO_REDIRECT", "COMMIT", ""])
    pod.run([f"iptables-{variant}-restore", "--noflush"], input=payload)
    pod.run(["ip", "rule", "add", "fwmark", "4242", "lookup", "99"])
    pod.run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "99"])
    assert cleanup(pod).changed
    assert snapshot(pod) == before


def test_cleanup_keeps_unrelated_policy_routing(pod: Netns) -> None:
    pod.run(["ip", "rule", "add", "fwmark", "7", "lookup", "77"])
    pod.run(["ip", "route", "add", "10.99.0.0/16", "dev", "lo", "table", "77"])
    before = snapshot(pod)
    cleanup(pod)
    assert snapshot(pod) == before


def test_detection_and_status_create_nothing(pod: Netns) -> None:
    """Probing must never instantiate legacy tables (a legacy read would) nor nft tables."""
    before = snapshot(pod)
    assert legacy_tables(pod, 4) == [] and legacy_tables(pod, 6) == []
    assert detect_backend(pod) == "iptables-nft"
    st = status(pod, make_spec(DEFAULT, pod))
    assert st.backends == () and st.drift
    assert legacy_tables(pod, 4) == [] and legacy_tables(pod, 6) == []
    assert snapshot(pod) == before


def test_detection_prefers_legacy_only_when_it_holds_rules(pod: Netns) -> None:
    pod.run(["iptables-legacy", "-t", "nat", "-L", "-n"])  # instantiates an empty legacy nat table
    assert legacy_tables(pod, 4) == ["nat"]
    assert detect_backend(pod) == "iptables-nft"  # an empty legacy table is not "existing rules"
    pod.run(["iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "1", "-j", "RETURN"])
    assert detect_backend(pod) == "iptables-legacy"
    assert detect_backend(pod, force="nft") == "iptables-nft"
    result = apply_spec(pod, make_spec(DEFAULT, pod))
    assert result.backend == "iptables-legacy"


def test_forced_binary(pod: Netns) -> None:
    assert detect_backend(pod, force="legacy") == "iptables-legacy"
    assert detect_backend(pod, force="nft") == "iptables-nft"
    with pytest.raises(Exception, match="legacy or nft"):
        detect_backend(pod, force="bogus")
    assert legacy_tables(pod, 4) == []
