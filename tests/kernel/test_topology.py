"""The shared test topology, landing server and client (root, real namespaces)."""

from __future__ import annotations

import time

import pytest
from harness.topology import _LIVE, CREATED_NAMESPACES, Topology, connect, ns_names, start_server

from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns


def v6(addr: str | None) -> str:
    """The address of a link made with IPv6 (every link here but test_ipv4_only's)."""
    assert addr is not None
    return addr


def test_layout(topology: Topology) -> None:
    assert topology.pod.label.startswith("mn-") and topology.peer.label.startswith("mn-")
    assert set(topology.names) <= ns_names()
    pod_addrs = topology.pod.run(["ip", "-br", "addr"]).stdout
    assert f"{topology.pod_ip4}/24" in pod_addrs and f"{v6(topology.pod_ip6)}/64" in pod_addrs
    assert topology.pod_ip4.startswith("10.") and v6(topology.pod_ip6).startswith("fd00:")
    peer_addrs = topology.peer.run(["ip", "-br", "addr"]).stdout
    assert f"{topology.peer_ip4}/24" in peer_addrs and f"{v6(topology.peer_ip6)}/64" in peer_addrs
    for ns in (topology.pod, topology.peer):
        assert (
            "UP" in ns.run(["ip", "-br", "link", "show", "lo"]).stdout
            or "UNKNOWN" in ns.run(["ip", "-br", "link", "show", "lo"]).stdout
        )
        assert "default" not in ns.run(["ip", "route"]).stdout
        assert "default" not in ns.run(["ip", "-6", "route"]).stdout
    # IPv6 usable immediately (nodad): no tentative address.
    lines = topology.pod.run(["ip", "-6", "-o", "addr"]).stdout.splitlines()
    assert not [ln for ln in lines if v6(topology.pod_ip6) in ln and "tentative" in ln]


def test_comes_up_fast_and_cleans_up() -> None:
    t0 = time.monotonic()
    topo = Topology().start()
    try:
        assert time.monotonic() - t0 < 1.0
        server = topo.start_server(topo.peer, "peer", tcp_ports=[8080])
        loose = start_server(topo.pod, "loose", tcp_ports=[8081])  # module-level: still ours to stop
        proc = topo.spawn(topo.pod, ["sleep", "60"])
        names = list(topo.names)
    finally:
        topo.close()
    assert not set(names) & ns_names()
    assert server.proc.returncode is not None and loose.proc.returncode is not None
    assert proc.returncode is not None
    topo.close()  # idempotent


def test_cleanup_when_the_test_body_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        with Topology() as topo:
            names = list(topo.names)
            server = topo.start_server(topo.peer, "peer", udp_ports=[53])
            _ = 1 / 0
    assert not set(names) & ns_names()
    assert server.proc.returncode is not None


def test_cleanup_when_setup_fails_half_way() -> None:
    topo = Topology(extra_pod_ifaces=["eth0"])  # duplicate interface name -> ip fails after 3 namespaces
    with pytest.raises(RuntimeError, match="File exists"):
        topo.start()
    assert not any(n.startswith(topo.prefix) for n in ns_names())


def test_ipv4_only() -> None:
    with Topology(ipv6=False) as topo:
        assert topo.pod_ip6 is None
        assert "inet6 fd00" not in topo.pod.run(["ip", "-6", "addr"]).stdout


def test_extra_ifaces() -> None:
    with Topology(extra_pod_ifaces=["eth1"], dummy_pod_ifaces=["dum0"]) as topo:
        assert len(topo.names) == 3
        eth1 = topo.links["eth1"]
        assert eth1.pod_ip4.rsplit(".", 1)[0] != topo.pod_ip4.rsplit(".", 1)[0]
        links = topo.pod.run(["ip", "-o", "link"]).stdout
        assert all(f" {i}@" in links or f" {i}:" in links for i in ("eth0", "eth1", "dum0"))
        topo.start_server(eth1.peer, "third", tcp_ports=[80])
        topo.start_server(topo.peer, "peer", tcp_ports=[80])
        assert connect(topo.pod, eth1.peer_ip4, 80)["name"] == "third"
        assert connect(topo.pod, v6(eth1.peer_ip6), 80)["name"] == "third"
        assert connect(topo.pod, topo.peer_ip4, 80)["name"] == "peer"


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_connect_lands_on_peer(topology: Topology, family: str, proto: str) -> None:
    dst = topology.peer_ip4 if family == "v4" else v6(topology.peer_ip6)
    src = topology.pod_ip4 if family == "v4" else v6(topology.pod_ip6)
    kw = {"tcp_ports": [8080]} if proto == "tcp" else {"udp_ports": [8080]}
    server = topology.start_server(topology.peer, "peer", uid=1000, **kw)
    assert server.alive()
    r = connect(topology.pod, dst, 8080, proto=proto, uid=1000)
    assert r.get("name") == "peer", r
    assert r["proto"] == proto and r["listener_port"] == 8080
    assert r["local"] == [dst, 8080] and r["peer"][0] == src and r["orig_dst"] is None
    assert r["reply_from"] == [dst, 8080] and r["client"] == r["peer"]


def test_connect_src_port_and_failures(topology: Topology) -> None:
    topology.start_server(topology.peer, "peer", tcp_ports=[8080])
    r = connect(topology.pod, topology.peer_ip4, 8080, src_ip=topology.pod_ip4, src_port=40123)
    assert r["peer"] == [topology.pod_ip4, 40123]
    assert connect(topology.pod, topology.peer_ip4, 8081)["error"] == "refused"
    assert connect(topology.pod, "192.0.2.1", 80)["error"] == "unreachable"  # no default route
    topology.peer.run(["nft", "add table inet t; add chain inet t in { type filter hook input priority 0; }"])
    topology.peer.run(["nft", "add rule inet t in tcp dport 8080 drop"])
    r = connect(topology.pod, topology.peer_ip4, 8080, timeout=0.3)
    assert r["error"] == "timeout", r


def test_server_runs_as_uid(topology: Topology) -> None:
    server = topology.start_server(topology.pod, "app", tcp_ports=[9080], uid=1000, gid=1001)
    status = open(f"/proc/{server.pid}/status").read()
    assert "Uid:\t1000\t1000\t1000\t1000" in status and "Gid:\t1001\t1001\t1001\t1001" in status
    assert Netns.resolve(pid=server.pid).inode == topology.pod.inode
    with pytest.raises(RuntimeError, match="before READY"):
        start_server(topology.pod, "dup", tcp_ports=[9080], uid=1000)  # port taken


def test_redirect_output_gives_orig_dst(topology: Topology) -> None:
    """Istio-style outbound capture: REDIRECT to 15001 except the proxy's own uid."""
    pod = topology.pod
    topology.start_server(pod, "proxy", tcp_ports=[15001], udp_ports=[15053], uid=1337)
    topology.start_server(topology.peer, "peer", tcp_ports=[8080], udp_ports=[53])
    for tool, dst in (("iptables-nft", topology.peer_ip4), ("ip6tables-nft", v6(topology.peer_ip6))):
        pod.run([tool, "-w", "-t", "nat", "-A", "OUTPUT", "-m", "owner", "--uid-owner", "1337",
                 "-j", "RETURN"])  # fmt: skip
        pod.run([tool, "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dst, "-j", "REDIRECT",
                 "--to-ports", "15001"])  # fmt: skip
        pod.run([tool, "-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "REDIRECT",
                 "--to-ports", "15053"])  # fmt: skip
    # Host untouched: the rules exist only in the pod.
    assert "15001" in pod.run(["iptables-nft-save", "-t", "nat"]).stdout
    assert "15001" not in topology.peer.run(["iptables-nft-save", "-t", "nat"]).stdout

    for dst, loopback in ((topology.peer_ip4, "127.0.0.1"), (v6(topology.peer_ip6), "::1")):
        r = connect(pod, dst, 8080, uid=1000)
        assert r.get("name") == "proxy", r
        assert r["orig_dst"] == [dst, 8080]
        assert r["local"] == [loopback, 15001] and r["listener_port"] == 15001

        r = connect(pod, dst, 8080, uid=1337)  # the proxy's own traffic is not captured
        assert r.get("name") == "peer" and r["orig_dst"] is None, r

        # DNS capture: the reply comes back from the address the client asked (reverse NAT).
        r = connect(pod, dst, 53, proto="udp", uid=1000)
        assert r.get("name") == "proxy" and r["listener_port"] == 15053, r
        assert r["reply_from"] == [dst, 53]


def test_redirect_prerouting_inbound(topology: Topology) -> None:
    """Istio-style inbound capture: traffic from the peer to the pod goes to 15006."""
    pod = topology.pod
    topology.start_server(pod, "inbound", tcp_ports=[15006], uid=1337)
    topology.start_server(pod, "app", tcp_ports=[9080], uid=1000)
    pod.run(["iptables-nft", "-w", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "REDIRECT",
             "--to-ports", "15006"])  # fmt: skip
    r = connect(topology.peer, topology.pod_ip4, 9080)
    assert r.get("name") == "inbound", r
    assert r["orig_dst"] == [topology.pod_ip4, 9080] and r["local"] == [topology.pod_ip4, 15006]
    r = connect(topology.peer, v6(topology.pod_ip6), 9080)  # no ip6tables rule: lands on the app
    assert r.get("name") == "app" and r["orig_dst"] is None, r


def test_tproxy_transparent_listener(topology: Topology) -> None:
    """TPROXY: the transparent listener sees the original destination as its local address."""
    pod = topology.pod
    topology.start_server(pod, "tproxy", tcp_ports=[15006], uid=1337, transparent=True)
    pod.run(["ip", "rule", "add", "fwmark", "0x1/0x1", "lookup", "133"])
    pod.run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "133"])
    pod.run(["iptables-nft", "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "9080",
             "-j", "TPROXY", "--on-port", "15006", "--tproxy-mark", "0x1/0x1"])  # fmt: skip
    r = connect(topology.peer, topology.pod_ip4, 9080)
    assert r.get("name") == "tproxy", r
    assert r["local"] == [topology.pod_ip4, 9080] and r["listener_port"] == 15006
    assert r["peer"][0] == topology.peer_ip4


def test_no_namespace_leak_from_fixtures() -> None:
    # Runs last in this file. Other engineers' runs may own other mn- namespaces at the same
    # time, so check only the ones this process created.
    assert CREATED_NAMESPACES, "earlier tests should have created namespaces"
    assert not set(CREATED_NAMESPACES) & ns_names()
    assert not _LIVE, f"processes still running: {list(_LIVE)}"
