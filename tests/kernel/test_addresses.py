"""Istio's IPv6 detection from the pod's addresses, on real namespaces and on /proc text."""

from __future__ import annotations

import pytest
from harness.topology import Topology

from meshnet.errors import ApplyError
from meshnet.state.addresses import detect_ipv6, fib_trie_locals, if_inet6_hex, ipv6_enabled, local_addresses

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
fd00000000000000000000000000000002 02 40 00 80     eth0
"""


def test_text_parsers() -> None:
    assert if_inet6_hex(IF_INET6)[:2] == ["00000000000000000000000000000001", "fe800000000000000000000000000001"]
    trie = "Main:\n  +-- 10.0.0.0/24 2 0 2\n     |-- 10.0.0.2\n        /32 host LOCAL\n     |-- 10.0.0.255\n" \
           "        /32 link BROADCAST\nLocal:\n     |-- 10.0.0.2\n        /32 host LOCAL\n"
    assert fib_trie_locals(trie) == ["10.0.0.2"]


@pytest.mark.netns
@pytest.mark.parametrize("ipv6", [True, False])
@pytest.mark.parametrize("dual_stack", [True, False])
def test_text_rule_agrees_with_the_ipaddress_rule(ipv6: bool, dual_stack: bool) -> None:
    with Topology(ipv6=ipv6) as topo:
        expected = detect_ipv6(local_addresses(topo.pod), dual_stack)
        assert ipv6_enabled(topo.pod, dual_stack) == expected
        assert expected == (ipv6 and dual_stack)  # IPv4 is present: v6 only with dual stack
        # An IPv6-only pod: remove the IPv4 address.
        if ipv6:
            topo.pod.run(["ip", "-4", "addr", "flush", "dev", "eth0"])
            assert ipv6_enabled(topo.pod, dual_stack) is True
            assert detect_ipv6(local_addresses(topo.pod), dual_stack) is True


@pytest.mark.netns
def test_no_usable_address_is_an_error() -> None:
    with Topology(ipv6=False) as topo:
        topo.pod.run(["ip", "-4", "addr", "flush", "dev", "eth0"])
        with pytest.raises(ApplyError, match="no valid local IP address"):
            ipv6_enabled(topo.pod, False)
