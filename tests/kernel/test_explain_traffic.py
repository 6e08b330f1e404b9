"""`meshnet explain` against real traffic: for the traffic scenarios of issue 3, the verdict explain
predicts from the live rules is where a real connection lands.

Each case applies a spec with the applier, asks explain about a packet, then sends that packet's
connection for real and checks the landing server (proxy listener port, app or peer) against the
verdict. The expected verdict kind is asserted too, so a case where explain and the kernel agree
for the wrong reason (nothing captured at all) fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness.topology import connect
from harness.traffic_helpers import (
    APP_PORT,
    APP_UID,
    DNS_PORT,
    EXCLUDED_INBOUND_PORT,
    INBOUND_PORT,
    OTHER_PEER_PORT,
    OUTBOUND_PORT,
    PEER_PORT,
    PROXY_UID,
    Lab,
    istio_spec,
    resolv_conf_servers,
    traffic_lab,
)

from meshnet.diagnose.explain.iptables import Explanation, explain_live
from meshnet.diagnose.explain.packet import parse_packet

pytestmark = [pytest.mark.netns]
BACKENDS = ("iptables-legacy", "iptables-nft", "nftables")
DEFAULT = istio_spec()


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with traffic_lab(request.param) as lab:
        yield lab


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def predict_and_send(lab: Lab, *, direction: str, dst: str, port: int, proto: str = "tcp", uid: int = 0,
                     fam: int = 4) -> tuple[Explanation, dict[str, Any]]:
    if direction == "out":
        src, extra, sender = lab.ip("pod", fam), f"uid={uid}", lab.pod
    else:
        src, extra, sender = lab.ip("peer", fam), "iface=eth0", lab.peer
    packet = parse_packet(f"{proto} {_ep(src, 40000)} -> {_ep(dst, port)} {direction} {extra}")
    results = explain_live(lab.pod, packet)
    assert [r.backend for r in results] == [lab.backend], [r.lines() for r in results]
    landed = connect(sender, dst, port, proto=proto, uid=uid)
    ex = results[0]
    where = "\n".join(ex.lines()) + f"\nlanded: {landed}\nrules:\n{lab.dump()}"
    assert ex.verdict is not None, where
    if ex.verdict.kind in ("redirect", "tproxy"):
        assert landed.get("name") == "proxy" and landed["listener_port"] == ex.verdict.port, where
    else:
        assert ex.verdict.kind == "pass", where
        assert landed.get("name") in ("app", "peer"), where
    return ex, landed


@pytest.mark.parametrize("fam", [4, 6])
def test_outbound_captured_to_15001(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    ex, _ = predict_and_send(lab, direction="out", dst=lab.ip("peer", fam), port=PEER_PORT, uid=APP_UID, fam=fam)
    assert ex.verdict and (ex.verdict.port, ex.verdict.capture) == (OUTBOUND_PORT, "outbound")


@pytest.mark.parametrize("fam", [4, 6])
def test_inbound_captured_to_15006(lab: Lab, fam: int) -> None:
    lab.apply(DEFAULT)
    ex, _ = predict_and_send(lab, direction="in", dst=lab.ip("pod", fam), port=APP_PORT, fam=fam)
    assert ex.verdict and (ex.verdict.port, ex.verdict.capture) == (INBOUND_PORT, "inbound")


def test_excluded_inbound_port_reaches_app(lab: Lab) -> None:
    lab.apply(DEFAULT)
    ex, landed = predict_and_send(lab, direction="in", dst=lab.ip("pod"), port=EXCLUDED_INBOUND_PORT)
    assert ex.verdict and ex.verdict.kind == "pass" and landed["name"] == "app"


def test_proxy_uid_bypasses(lab: Lab) -> None:
    lab.apply(DEFAULT)
    ex, landed = predict_and_send(lab, direction="out", dst=lab.ip("peer"), port=PEER_PORT, uid=PROXY_UID)
    assert ex.verdict and ex.verdict.kind == "pass" and landed["name"] == "peer"


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_loopback_not_captured(lab: Lab, loopback: str) -> None:
    lab.apply(DEFAULT)
    ex, landed = predict_and_send(lab, direction="out", dst=loopback, port=APP_PORT, uid=APP_UID,
                                  fam=4 if "." in loopback else 6)
    assert ex.verdict and ex.verdict.kind == "pass" and landed["name"] == "app"
    assert ex.packet.oif == "lo"


def test_proxy_to_own_pod_ip_goes_inbound(lab: Lab) -> None:
    """The own-address rule: uid 1337 dialling the pod IP leaves via lo and is sent to 15006."""
    lab.apply(DEFAULT)
    ex, _ = predict_and_send(lab, direction="out", dst=lab.ip("pod"), port=APP_PORT, uid=PROXY_UID)
    assert ex.packet.oif == "lo"
    assert ex.verdict and (ex.verdict.port, ex.verdict.capture) == (INBOUND_PORT, "inbound")


def test_excluded_cidr_bypasses(lab: Lab) -> None:
    peer = lab.ip("peer")
    lab.apply(istio_spec("-x", f"{peer}/32"))
    ex, landed = predict_and_send(lab, direction="out", dst=peer, port=PEER_PORT, uid=APP_UID)
    assert ex.verdict and ex.verdict.kind == "pass" and landed["name"] == "peer"


def test_excluded_outbound_port_bypasses(lab: Lab) -> None:
    lab.apply(istio_spec("-o", str(OTHER_PEER_PORT)))
    ex, _ = predict_and_send(lab, direction="out", dst=lab.ip("peer"), port=OTHER_PEER_PORT, uid=APP_UID)
    assert ex.verdict and ex.verdict.kind == "pass"
    ex, _ = predict_and_send(lab, direction="out", dst=lab.ip("peer"), port=PEER_PORT, uid=APP_UID)
    assert ex.verdict and ex.verdict.kind == "redirect"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_captured_to_15053(lab: Lab, proto: str) -> None:
    servers = resolv_conf_servers(lab.ip("peer", 4), lab.ip("peer", 6))
    lab.apply(istio_spec("--redirect-dns", dns_servers=servers))
    ex, _ = predict_and_send(lab, direction="out", dst=lab.ip("peer"), port=53, proto=proto, uid=APP_UID)
    assert ex.verdict and (ex.verdict.port, ex.verdict.capture) == (DNS_PORT, "dns")
    # The proxy's own upstream query is not captured.
    ex, landed = predict_and_send(lab, direction="out", dst=lab.ip("peer"), port=53, proto=proto, uid=PROXY_UID)
    assert ex.verdict and ex.verdict.kind == "pass" and landed["name"] == "peer"


def test_tproxy_inbound(lab: Lab) -> None:
    lab.apply(istio_spec("-m", "TPROXY"))
    ex, landed = predict_and_send(lab, direction="in", dst=lab.ip("pod"), port=APP_PORT)
    assert ex.verdict and ex.verdict.kind == "tproxy" and ex.verdict.port == INBOUND_PORT
    assert landed["local"] == [lab.ip("pod"), APP_PORT]
    ex, _ = predict_and_send(lab, direction="in", dst=lab.ip("pod"), port=EXCLUDED_INBOUND_PORT)
    assert ex.verdict and ex.verdict.kind == "pass"
