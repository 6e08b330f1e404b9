"""Real traffic through real rules, for every backend (issue 3, "Proof with real traffic").

Each case applies an Istio spec with the applier into a pod namespace, sends real TCP/UDP from a
chosen uid / namespace / source address and asserts where it landed: on the fake sidecar (with the
listener it hit and the original destination read back with SO_ORIGINAL_DST, or the transparent
socket's local address for TPROXY), on the app, or on a peer. One lab per backend (module-scoped),
rules swapped between cases by the applier's own cleanup.

Backend differences that matter for these cases are noted where they show up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.topology import connect
from harness.traffic_helpers import (
    APP_PORT,
    APP_UID,
    BACKENDS,
    DNS_PORT,
    EXCLUDED_INBOUND_PORT,
    INBOUND_PORT,
    INCLUDED_PEER_PORT,
    OTHER_PEER_PORT,
    OUTBOUND_PORT,
    PEER_PORT,
    PROXY_UID,
    VIRT_DST,
    VIRT_PORT,
    Lab,
    expect,
    istio_spec,
    resolv_conf_servers,
    traffic_lab,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DEFAULT = istio_spec()
FAMILIES = (4, 6)


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with traffic_lab(request.param) as lab:
        yield lab


def test_baseline_without_rules(lab: Lab) -> None:
    """Without rules nothing is captured: proves every later 'captured' assertion can fail."""
    lab.clear()
    for fam in FAMILIES:
        expect(connect(lab.pod, lab.ip("peer", fam), PEER_PORT, uid=APP_UID), "peer")
        expect(connect(lab.peer, lab.ip("pod", fam), APP_PORT), "app", orig_dst=None)


@pytest.mark.parametrize("fam", FAMILIES)
def test_outbound_captured_with_original_destination(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    dst = lab.ip("peer", fam)
    r = connect(lab.pod, dst, PEER_PORT, uid=APP_UID)
    expect(r, "proxy", port=OUTBOUND_PORT, orig_dst=[dst, PEER_PORT], lab=lab)
    # The app sees the peer's address answering, as it would with a real sidecar.
    assert r["reply_from"] == [dst, PEER_PORT], r


@pytest.mark.parametrize("fam", FAMILIES)
def test_inbound_captured_with_original_port(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    dst = lab.ip("pod", fam)
    r = connect(lab.peer, dst, APP_PORT)
    expect(r, "proxy", port=INBOUND_PORT, orig_dst=[dst, APP_PORT], lab=lab)
    assert r["peer"][0] == lab.ip("peer", fam), r


@pytest.mark.parametrize("fam", FAMILIES)
def test_excluded_inbound_port_reaches_app(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    r = connect(lab.peer, lab.ip("pod", fam), EXCLUDED_INBOUND_PORT)
    expect(r, "app", port=EXCLUDED_INBOUND_PORT, orig_dst=None, lab=lab)


@pytest.mark.parametrize("fam", FAMILIES)
def test_proxy_uid_bypasses_capture(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    r = connect(lab.pod, lab.ip("peer", fam), PEER_PORT, uid=PROXY_UID)
    expect(r, "peer", orig_dst=None, lab=lab)


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_loopback_app_to_app_not_captured(lab: Lab, loopback: str) -> None:
    lab.apply(DEFAULT)
    r = connect(lab.pod, loopback, APP_PORT, uid=APP_UID)
    expect(r, "app", orig_dst=None, lab=lab)


@pytest.mark.parametrize("fam", FAMILIES)
def test_inbound_passthrough_from_127_0_0_6(lab: Lab, fam: int) -> None:
    """Envoy's inbound passthrough: uid 1337 bound to 127.0.0.6 (::6) dials the pod IP and must reach
    the app; without the passthrough rule the uid-1337 lo rule would loop it back into 15006."""
    lab.apply(DEFAULT)
    src = "127.0.0.6" if fam == 4 else "::6"  # ::6 on lo is installed by apply_spec
    r = connect(lab.pod, lab.ip("pod", fam), APP_PORT, uid=PROXY_UID, src_ip=src)
    expect(r, "app", port=APP_PORT, orig_dst=None, lab=lab)
    assert r["peer"][0] == src, r


def test_uid_1337_to_own_pod_ip_is_redirected_inbound(lab: Lab) -> None:
    """The counterpart of the passthrough case: the same dial without 127.0.0.6 goes to 15006."""
    lab.apply(DEFAULT)
    dst = lab.ip("pod")
    r = connect(lab.pod, dst, APP_PORT, uid=PROXY_UID)
    expect(r, "proxy", port=INBOUND_PORT, orig_dst=[dst, APP_PORT], lab=lab)


@pytest.mark.parametrize("fam", FAMILIES)
def test_excluded_cidr_bypasses(lab: Lab, fam: int) -> None:
    peer = lab.ip("peer", fam)
    lab.apply(istio_spec("-x", f"{peer}/{32 if fam == 4 else 128}"))
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "peer", orig_dst=None, lab=lab)
    # Only that CIDR: the other peer is still captured.
    other = lab.ip("peer1", fam)
    expect(connect(lab.pod, other, PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT,
           orig_dst=[other, PEER_PORT], lab=lab)  # fmt: skip


@pytest.mark.parametrize("fam", FAMILIES)
def test_excluded_outbound_port_bypasses(lab: Lab, fam: int) -> None:
    lab.apply(istio_spec("-o", str(OTHER_PEER_PORT)))
    peer = lab.ip("peer", fam)
    expect(connect(lab.pod, peer, OTHER_PEER_PORT, uid=APP_UID), "peer", orig_dst=None, lab=lab)
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT,
           orig_dst=[peer, PEER_PORT], lab=lab)  # fmt: skip


@pytest.mark.parametrize("fam", FAMILIES)
def test_include_outbound_port_only(lab: Lab, fam: int) -> None:
    """`-q P` with no `-i`: only port P is captured, whatever the destination."""
    lab.apply(istio_spec("-i", "", "-q", str(INCLUDED_PEER_PORT)))
    peer = lab.ip("peer", fam)
    expect(connect(lab.pod, peer, INCLUDED_PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT,
           orig_dst=[peer, INCLUDED_PEER_PORT], lab=lab)  # fmt: skip
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "peer", orig_dst=None, lab=lab)


@pytest.mark.parametrize("fam", FAMILIES)
def test_tproxy_inbound_keeps_source_and_destination(lab: Lab, fam: int) -> None:
    """TPROXY: no NAT at all; the transparent listener on 15006 accepts a socket whose local address
    is the original destination and whose peer is the real client."""
    lab.apply(istio_spec("-m", "TPROXY"))
    pod, peer = lab.ip("pod", fam), lab.ip("peer", fam)
    r = connect(lab.peer, pod, APP_PORT)
    expect(r, "proxy", port=INBOUND_PORT, orig_dst=None, lab=lab)
    assert r["local"] == [pod, APP_PORT], r
    assert r["peer"][0] == peer, r
    # Excluded inbound ports still bypass, and outbound is still REDIRECTed in TPROXY mode.
    expect(connect(lab.peer, pod, EXCLUDED_INBOUND_PORT), "app", orig_dst=None, lab=lab)
    # Passthrough here hinges on the mangle rule `-s 127.0.0.6 -i lo -j RETURN`: the proxy's packet
    # carries mark 1338 over lo, so without it the SYN would be TPROXY'd back to 15006.
    src = "127.0.0.6" if fam == 4 else "::6"
    r = connect(lab.pod, pod, APP_PORT, uid=PROXY_UID, src_ip=src)
    expect(r, "app", port=APP_PORT, orig_dst=None, lab=lab)
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT,
           orig_dst=[peer, PEER_PORT], lab=lab)  # fmt: skip


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_to_resolv_conf_server_captured(lab: Lab, fam: int, proto: str) -> None:
    servers = resolv_conf_servers(lab.ip("peer", 4), lab.ip("peer", 6))
    lab.apply(istio_spec("--redirect-dns", dns_servers=servers))
    server = lab.ip("peer", fam)
    r = connect(lab.pod, server, 53, proto=proto, uid=APP_UID)
    # SO_ORIGINAL_DST exists for TCP only; for UDP the reply's source proves the reverse NAT.
    expect(r, "proxy", port=DNS_PORT, orig_dst=[server, 53] if proto == "tcp" else None, lab=lab)
    assert r["reply_from"] == [server, 53], r
    # The proxy's own upstream query is not captured (uid 1337).
    expect(connect(lab.pod, server, 53, proto=proto, uid=PROXY_UID), "peer", lab=lab)


@pytest.mark.parametrize("fam", FAMILIES)
def test_excluded_interface(lab: Lab, fam: int) -> None:
    """`-c eth1`: nothing crossing eth1 is captured, either way; eth0 still is."""
    lab.apply(istio_spec("-c", "eth1"))
    peer, peer1, pod, pod1 = (lab.ip(w, fam) for w in ("peer", "peer1", "pod", "pod1"))
    expect(connect(lab.pod, peer1, PEER_PORT, uid=APP_UID), "peer1", orig_dst=None, lab=lab)
    expect(connect(lab.peer1, pod1, APP_PORT), "app", orig_dst=None, lab=lab)
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT,
           orig_dst=[peer, PEER_PORT], lab=lab)  # fmt: skip
    expect(connect(lab.peer, pod, APP_PORT), "proxy", port=INBOUND_PORT, orig_dst=[pod, APP_PORT], lab=lab)


def test_kube_virt_interface_is_outbound(lab: Lab) -> None:
    """`-k eth1 -i '*'`: a VM behind eth1 reaching 'the outside' goes to 15001 (outbound), not 15006."""
    lab.apply(istio_spec("-k", "eth1"))
    r = connect(lab.peer1, VIRT_DST, VIRT_PORT)
    expect(r, "proxy", port=OUTBOUND_PORT, orig_dst=[VIRT_DST, VIRT_PORT], lab=lab)
    assert r["peer"][0] == lab.ip("peer1"), r
    # eth0 keeps normal inbound capture.
    pod = lab.ip("pod")
    expect(connect(lab.peer, pod, APP_PORT), "proxy", port=INBOUND_PORT, orig_dst=[pod, APP_PORT], lab=lab)


def test_tproxy_with_no_listener_differs_by_backend(lab: Lab) -> None:
    """Nobody listens on the TPROXY port (-z 15007): xt `TPROXY` drops the SYN (fail closed), nft
    `tproxy` finds no socket and falls through to the next rule, so the connection reaches the app
    directly (fail open). Istio's own native nftables backend behaves the same way."""
    lab.apply(istio_spec("-m", "TPROXY", "-z", "15007"))
    r = connect(lab.peer, lab.ip("pod"), APP_PORT, timeout=1.0)
    if lab.backend == "nftables":
        expect(r, "app", orig_dst=None, lab=lab)
    else:
        assert r.get("error") == "timeout", f"{r}\n{lab.dump()}"
