"""`meshnet doctor` on broken states built on purpose, one namespace per root cause: doctor must report
exactly that cause (and nothing else that is a problem); healthy pods must have no findings.

States are built with the applier and then broken with a single iptables / nft / ip command
run inside the test's own `mn-` namespace, never in the host's.
"""

from __future__ import annotations

import socket
import struct

import pytest
from harness.topology import Topology
from harness.traffic_helpers import istio_spec, resolv_conf_servers

from meshnet.apply.applier import apply_spec
from meshnet.apply.netns import Netns
from meshnet.diagnose.doctor import diagnose
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.render_restore import render_family
from meshnet.spec.spec import Spec

pytestmark = [pytest.mark.netns]
PROXY_TCP = [15001, 15006, 15053]




def proxy(t: Topology, transparent: bool = False) -> None:
    t.start_server(t.pod, "proxy", tcp_ports=PROXY_TCP, udp_ports=[15053], uid=1337, transparent=transparent)


def problems(t: Topology, spec: Spec | None = None, host: Netns | None = None) -> set[str]:
    report = diagnose(t.pod, spec, host)
    return {f.kind for f in report.problems}


def apply(t: Topology, spec: Spec, backend: str = "iptables-nft") -> None:
    assert not t.pod.is_current()
    apply_spec(t.pod, spec, backend=backend)


# ----------------------------------------------------------------- healthy
@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nftables"])
def test_healthy_redirect_pod_has_no_findings(topo: Topology, quiet_host: Netns, backend: str) -> None:
    spec = istio_spec()
    apply(topo, spec, backend)
    proxy(topo)
    for expected in (spec, None):  # against the spec, and the structural checks alone
        report = diagnose(topo.pod, expected, quiet_host)
        assert report.problems == [], "\n".join(report.lines())
        assert report.exit_code == 0
        assert report.backends == [backend]
    if backend != "nftables":
        # The conntrack analyzer's findings are part of doctor: REDIRECT funnels inbound ports (info here,
        # since this kernel remaps collisions and the pod serves no port yet).
        assert "collision-risk" in {f.kind for f in report.findings if not f.is_problem}


@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_healthy_tproxy_pod_has_no_findings(topo: Topology, quiet_host: Netns, backend: str) -> None:
    spec = istio_spec("-m", "TPROXY")
    apply(topo, spec, backend)
    proxy(topo, transparent=True)
    for expected in (spec, None):
        report = diagnose(topo.pod, expected, quiet_host)
        assert report.problems == [], "\n".join(report.lines())


# ----------------------------------------------------------------- one root cause each
def test_no_rules_is_the_cni_race(topo: Topology, quiet_host: Netns) -> None:
    proxy(topo)
    report = diagnose(topo.pod, None, quiet_host)
    assert {f.kind for f in report.problems} == {"no-interception-rules"}
    assert report.exit_code == 1


def test_legacy_rules_on_an_nft_host(topo: Topology) -> None:
    apply(topo, istio_spec(), "iptables-legacy")
    proxy(topo)
    with Topology(ipv6=False) as host_topo:
        host = host_topo.peer
        host.run(["iptables-nft", "-A", "INPUT", "-s", "10.0.0.0/8", "-j", "ACCEPT"])
        assert problems(topo, None, host) == {"backend-mismatch"}
        # The same pod next to a legacy "host" is fine: the check can tell the two apart.
        host.run(["iptables-nft", "-F", "INPUT"])
        host.run(["iptables-legacy", "-A", "INPUT", "-s", "10.0.0.0/8", "-j", "ACCEPT"])
        assert problems(topo, None, host) == set()


def test_rules_in_two_backends(topo: Topology, quiet_host: Netns) -> None:
    spec = istio_spec()
    apply(topo, spec, "iptables-nft")
    topo.pod.run(["iptables-legacy-restore", "--noflush"], input=render_family(build_iptables(spec), 4))
    proxy(topo)
    assert problems(topo, None, quiet_host) == {"rules-in-several-backends"}


def test_drift_from_the_expected_spec(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec())
    proxy(topo)
    assert problems(topo, istio_spec("-d", "15090"), quiet_host) == {"drift"}
    assert problems(topo, istio_spec(), quiet_host) == set()


def test_output_jump_removed_is_incomplete(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec())
    proxy(topo)
    topo.pod.run(["iptables-nft", "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])
    report = diagnose(topo.pod, None, quiet_host)
    # The outbound probe fails; the structural hole is part of its evidence (one root cause, one finding).
    assert {f.kind for f in report.problems} == {"outbound-not-captured"}
    assert any("OUTPUT does not jump" in e and "v4" in e for e in report.problems[0].evidence)


def test_nft_redirect_chain_flushed_is_incomplete(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec(), "nftables")
    proxy(topo)
    topo.pod.run(["nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-redirect"])
    assert problems(topo, None, quiet_host) == {"outbound-not-captured"}
    # with the spec, drift names the missing rule instead
    assert problems(topo, istio_spec(), quiet_host) == {"drift"}


def test_tproxy_without_policy_route(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec("-m", "TPROXY"))
    proxy(topo, transparent=True)
    topo.pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "133"])
    report = diagnose(topo.pod, None, quiet_host)
    assert {f.kind for f in report.problems} == {"tproxy-routing-missing"}
    assert any("IPv4" in e for e in report.problems[0].evidence)


def test_dns_capture_without_conntrack_zones(topo: Topology, quiet_host: Netns) -> None:
    servers = resolv_conf_servers(topo.peer_ip4, topo.peer_ip6 or "")
    apply(topo, istio_spec("--redirect-dns", dns_servers=servers))
    proxy(topo)
    assert problems(topo, None, quiet_host) == set()
    for tool in ("iptables-nft", "ip6tables-nft"):
        for chain in ("ISTIO_OUTPUT_DNS", "ISTIO_INBOUND"):
            topo.pod.run([tool, "-t", "raw", "-F", chain])
    assert problems(topo, None, quiet_host) == {"dns-capture-without-ct-zones"}


def test_nothing_listening_on_the_capture_ports(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec())
    report = diagnose(topo.pod, None, quiet_host)
    assert {f.kind for f in report.problems} == {"proxy-not-listening"}
    assert "15001" in report.problems[0].summary and "15006" in report.problems[0].summary


def _syn_fin(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A TCP segment with SYN and FIN set: conntrack classifies it INVALID."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x03, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr))
    data = pseudo + hdr
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return hdr[:16] + struct.pack("!H", ~total & 0xFFFF) + hdr[18:]


def _send_invalid(t: Topology, count: int = 3) -> None:
    s = t.peer.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with s:
        for i in range(count):
            s.sendto(_syn_fin(t.peer_ip4, t.pod_ip4, 41000 + i, 8080), (t.pod_ip4, 0))


def test_invalid_packets_without_drop_invalid(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec())
    proxy(topo)
    assert problems(topo, None, quiet_host) == set()
    _send_invalid(topo)
    report = diagnose(topo.pod, None, quiet_host)
    assert {f.kind for f in report.problems} == {"invalid-packets"}, "\n".join(report.lines())


def test_invalid_packets_with_drop_invalid_are_fine(topo: Topology, quiet_host: Netns) -> None:
    apply(topo, istio_spec("--drop-invalid"))
    proxy(topo)
    _send_invalid(topo)
    assert problems(topo, None, quiet_host) == set()
