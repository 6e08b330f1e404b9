"""Ambient interception proven with traffic, on every backend (issue 13, "Proof with traffic").

In the pod namespace a fake ztunnel (the landing server with SO_MARK 0x539 on every socket and
IP_TRANSPARENT listeners, as ztunnel's in-pod sockets are) listens on 15001, 15006, 15008 and 15053;
an app listens on 8080. The peer namespace is both "the rest of the network" and the node: it
runs a server on 8080/53 and, for the probe case, the host rules with the pod's IP in the probe
set, so a locally originated connection (a socket exists: kubelet's probe) is SNATed to
169.254.7.127. Each case names where the connection must land, with its original destination.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness.topology import Topology, connect

from meshnet.ambient.apply import apply_ambient, cleanup_ambient
from meshnet.ambient.spec import ZTUNNEL_MARK, AmbientSpec
from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns
BACKENDS = ("iptables-legacy", "iptables-nft", "iptc", "nftables")
APP = 8080


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as t:
        t.start_server(t.pod, "ztunnel", tcp_ports=(15001, 15006, 15008, 15053), udp_ports=(15053,),
                       transparent=True, mark=ZTUNNEL_MARK)
        t.start_server(t.pod, "app", tcp_ports=(APP,))
        t.start_server(t.peer, "peer", tcp_ports=(APP, 53), udp_ports=(53,))
        yield t


def _lands(result: dict[str, Any], name: str, port: int | None = None) -> dict[str, Any]:
    assert result.get("name") == name, result
    if port is not None:
        assert result["listener_port"] == port, result
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_inbound_bypass_and_dns(topo: Topology, backend: str) -> None:
    pod, peer = topo.pod, topo.peer
    apply_ambient(pod, AmbientSpec(redirect_dns=True, enable_ipv6=True), backend=backend)
    for pod_ip, peer_ip in ((topo.pod_ip4, topo.peer_ip4), (topo.pod_ip6, topo.peer_ip6)):
        assert pod_ip and peer_ip
        # App outbound TCP -> ztunnel's outbound port, original destination kept.
        r = _lands(connect(pod, peer_ip, APP), "ztunnel", 15001)
        assert r["orig_dst"] == [peer_ip, APP]
        # Inbound plaintext TCP -> 15006, original destination kept.
        r = _lands(connect(peer, pod_ip, APP), "ztunnel", 15006)
        assert r["orig_dst"] == [pod_ip, APP]
        # HBONE goes straight to 15008.
        r = _lands(connect(peer, pod_ip, 15008), "ztunnel", 15008)
        assert r["orig_dst"] is None
        # ztunnel's own (marked) connections are not captured again.
        _lands(connect(pod, peer_ip, APP, mark=ZTUNNEL_MARK), "peer", APP)
        # The app calling itself over lo stays local.
        _lands(connect(pod, "127.0.0.1" if "." in pod_ip else "::1", APP), "app", APP)
        # DNS, UDP and TCP, to ztunnel's DNS proxy; ztunnel's own queries reach the resolver.
        r = _lands(connect(pod, peer_ip, 53, proto="udp"), "ztunnel", 15053)
        assert r["proto"] == "udp"
        r = _lands(connect(pod, peer_ip, 53), "ztunnel", 15053)
        assert r["orig_dst"] == [peer_ip, 53]
        _lands(connect(pod, peer_ip, 53, proto="udp", mark=ZTUNNEL_MARK), "peer", 53)
    assert cleanup_ambient(pod).changed
    _lands(connect(pod, topo.peer_ip4, APP), "peer", APP)  # and after cleanup nothing is captured


@pytest.mark.parametrize("backend", BACKENDS)
def test_ingress_mode_and_dns_disabled_for_the_pod(topo: Topology, backend: str) -> None:
    pod, peer = topo.pod, topo.peer
    spec = AmbientSpec(redirect_dns=True, ingress_mode=True, dns_proxy="disabled")
    apply_ambient(pod, spec, backend=backend)
    _lands(connect(peer, topo.pod_ip4, APP), "app", APP)  # no inbound capture
    _lands(connect(pod, topo.peer_ip4, APP), "ztunnel", 15001)  # outbound still captured
    _lands(connect(pod, topo.peer_ip4, 53, proto="udp"), "peer", 53)  # the pod opted out of DNS capture
    _lands(connect(pod, topo.peer_ip4, 53), "ztunnel", 15001)  # TCP 53 is plain outbound then


def _probe_set(node: Netns, backend: str, pod_ip: str) -> None:
    fam = 6 if ":" in pod_ip else 4
    if backend == "nftables":
        node.run(["nft", "add", "element", "inet", "istio-ambient-nat", f"istio-inpod-probes-v{fam}",
                  f"{{ {pod_ip} }}"])
    else:
        node.run(["ipset", "add", f"istio-inpod-probes-v{fam}", pod_ip, "comment", "pod-uid"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_node_probe_is_snated_and_reaches_the_app_uncaptured(topo: Topology, backend: str) -> None:
    pod, node = topo.pod, topo.peer
    spec = AmbientSpec(redirect_dns=True, enable_ipv6=True, kubelet_uid="0")  # the probe client runs as root here
    snat = {4: spec.host_probe_snat, 6: spec.host_probe_snat_v6}
    apply_ambient(pod, spec, backend=backend)
    ips = {4: (topo.pod_ip4, topo.peer_ip4), 6: (topo.pod_ip6, topo.peer_ip6)}
    # Before the node knows the pod, a node connection is ordinary inbound: captured.
    for pod_ip, _ in ips.values():
        _lands(connect(node, str(pod_ip), APP), "ztunnel", 15006)
    apply_ambient(node, spec, backend=backend, host=True)
    for fam, (pod_ip, peer_ip) in ips.items():
        _probe_set(node, backend, str(pod_ip))
        # The pod needs a way back to the probe address (a real pod has its default route for that).
        pod.run(["ip", f"-{fam}", "route", "add", snat[fam], "via", str(peer_ip), "dev", topo.link.pod_if])
        r = _lands(connect(node, str(pod_ip), APP), "app", APP)
        assert r["peer"][0] == snat[fam] and r["orig_dst"] is None
    assert cleanup_ambient(node, host=True).changed
    for pod_ip, _ in ips.values():
        _lands(connect(node, str(pod_ip), APP), "ztunnel", 15006)


@pytest.mark.parametrize("backend", ["nftables", "iptables-nft"])
def test_only_kubelets_uid_is_snated_on_native_nftables(topo: Topology, backend: str) -> None:
    """nftables' host rule matches kubelet's uid (`meta skuid`, as istio-cni's): a probe from that uid is
    SNATed and reaches the app; another local process's connection is not. iptables matches any local
    socket (`-m owner --socket-exists`), so there both are SNATed (Istio's difference, kept)."""
    pod, node = topo.pod, topo.peer
    kubelet, other = 4242, 4343
    spec = AmbientSpec(enable_ipv6=True, kubelet_uid=str(kubelet))
    apply_ambient(pod, spec, backend=backend)
    apply_ambient(node, spec, backend=backend, host=True)
    if backend == "nftables":
        listing = node.run(["nft", "list", "table", "inet", "istio-ambient-nat"]).stdout
        assert f"meta skuid {kubelet}" in listing, listing
    snat = {4: spec.host_probe_snat, 6: spec.host_probe_snat_v6}
    for fam, pod_ip, peer_ip in ((4, topo.pod_ip4, topo.peer_ip4), (6, topo.pod_ip6, topo.peer_ip6)):
        _probe_set(node, backend, str(pod_ip))
        pod.run(["ip", f"-{fam}", "route", "add", snat[fam], "via", str(peer_ip), "dev", topo.link.pod_if])
        probe = _lands(connect(node, str(pod_ip), APP, uid=kubelet), "app", APP)
        assert probe["peer"][0] == snat[fam], probe
        if backend == "nftables":
            _lands(connect(node, str(pod_ip), APP, uid=other), "ztunnel", 15006)  # not kubelet: captured
        else:
            assert _lands(connect(node, str(pod_ip), APP, uid=other), "app", APP)["peer"][0] == snat[fam]
    assert cleanup_ambient(node, host=True).changed
