"""The fast paths of a pod start keep Istio's semantics: backend choice, IPv6 from a CNI result."""

from __future__ import annotations

import pytest
from harness.topology import Topology

from meshnet.apply.applier import apply_spec
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.spec import Spec
from meshnet.state.addresses import ipv6_from_addresses

INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]


def spec() -> Spec:
    return parse_istio_args(INJECTOR, env={})[0]


@pytest.mark.parametrize(("cidrs", "dual", "expected"), [
    (["10.0.0.2/24"], False, False),
    (["10.0.0.2/24", "fd00::2/64"], False, False),   # Go lists IPv4 first: IPv4 wins
    (["10.0.0.2/24", "fd00::2/64"], True, True),     # dual stack: any usable v6
    (["fd00::2/64"], False, True),                   # IPv6-only pod
    (["fe80::1/64", "10.0.0.2/24"], True, False),    # link-local does not count
    (["127.0.0.1/8", "::1/128"], False, None),       # nothing usable: read the namespace instead
    ([], False, None),
])
def test_ipv6_from_cni_result_addresses(cidrs: list[str], dual: bool, expected: bool | None) -> None:
    assert ipv6_from_addresses(cidrs, dual) is expected


@pytest.mark.netns
def test_auto_on_a_fresh_pod_writes_iptables_nft_in_one_go(topology: Topology) -> None:
    pod = topology.pod
    result = apply_spec(pod, spec(), backend="auto")
    assert (result.backend, result.changed) == ("iptables-nft", True)
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in pod.run(["iptables-nft-save", "-t", "nat"]).stdout
    try:
        legacy_tables = pod.read_proc_net("ip_tables_names").split()
    except FileNotFoundError:
        legacy_tables = []
    assert legacy_tables == []  # checking for legacy rules created none
    again = apply_spec(pod, spec(), backend="auto")  # the one-spawn write fails; the normal path: no-op
    assert (again.backend, again.changed) == ("iptables-nft", False)


@pytest.mark.netns
def test_auto_keeps_legacy_when_legacy_holds_rules(topology: Topology) -> None:
    pod = topology.pod
    pod.run(["iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
    result = apply_spec(pod, spec(), backend="auto")
    assert result.backend == "iptables-legacy"
    assert "ISTIO_OUTPUT" in pod.run(["iptables-legacy-save", "-t", "nat"]).stdout
    assert "ISTIO_OUTPUT" not in pod.run(["iptables-nft-save"]).stdout


@pytest.mark.netns
def test_auto_uses_nft_when_legacy_tables_are_empty(topology: Topology) -> None:
    pod = topology.pod
    pod.run(["iptables-legacy", "-t", "nat", "-S"])  # a legacy read instantiates an empty nat table
    assert "nat" in pod.read_proc_net("ip_tables_names")
    result = apply_spec(pod, spec(), backend="auto")
    assert result.backend == "iptables-nft"  # Istio's rule: legacy only when it holds rules
    assert "-A ISTIO_OUTPUT" not in pod.run(["iptables-legacy-save", "-t", "nat"]).stdout
