"""explain on an ambient pod: the verdicts match where the traffic tests see packets land."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness.topology import Topology

from meshnet.ambient.apply import apply_ambient
from meshnet.ambient.spec import AmbientSpec

pytestmark = pytest.mark.netns

CASES = [
    ("tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000 oif=eth0", "redirect", 15001),
    ("tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000 oif=eth0 mark=0x539", "pass", None),
    ("udp 10.0.0.5:41000 -> 10.96.0.10:53 out uid=1000 oif=eth0", "redirect", 15053),
    ("udp 10.0.0.5:41000 -> 10.96.0.10:53 out uid=1000 oif=eth0 mark=0x539", "pass", None),
    ("tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0", "redirect", 15006),
    ("tcp 10.1.1.1:5000 -> 10.0.0.5:15008 in iface=eth0", "pass", None),
    ("tcp 169.254.7.127:5000 -> 10.0.0.5:8080 in iface=eth0", "pass", None),
]


@pytest.mark.parametrize("backend", ["iptables-legacy", "iptables-nft", "nftables"])
def test_explain_follows_ambient_rules(topology: Topology, backend: str) -> None:
    apply_ambient(topology.pod, AmbientSpec(redirect_dns=True), backend=backend)
    for packet, kind, port in CASES:
        out = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "explain", "--json", "--netns",
                              topology.pod.path, packet], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (result,) = json.loads(out.stdout)["results"]
        assert result["backend"] == backend
        verdict = result["verdict"]
        if kind == "pass":
            assert verdict["kind"] not in ("redirect", "tproxy", "uncertain", "drop"), (packet, verdict)
        else:
            assert (verdict["kind"], verdict["port"]) == (kind, port), (packet, verdict)


def _doctor(ns_path: str) -> str:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", "doctor", "--netns", ns_path],
                          capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_status_and_doctor_see_ambient_routing_as_ambients(topology: Topology, backend: str) -> None:
    from meshnet.apply.applier import status

    pod = topology.pod
    apply_ambient(pod, AmbientSpec(), backend=backend)
    assert status(pod).backends == (backend,)
    report = _doctor(pod.path)
    assert "tproxy-routing-orphan" not in report and "tproxy-like-routing" not in report, report
    # Rules gone, routing left: the half state is named as ambient mode's.
    if backend == "nftables":
        pod.run(["nft", "delete", "table", "inet", "istio-ambient-mangle"])
        pod.run(["nft", "delete", "table", "inet", "istio-ambient-nat"])
    else:
        from meshnet.apply.backends.xt_cleanup import plan_removal
        from meshnet.apply.backends.xtables import Xtables

        xt = Xtables("nft")
        xt.restore(pod, 4, plan_removal(xt.save(pod, 4), 4).restore_text())
    report = _doctor(pod.path)
    assert "tproxy-routing-orphan" in report and "ambient mode's policy routing" in report, report


@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_explain_and_doctor_say_ztunnel_for_an_ambient_pod(topology: Topology, backend: str) -> None:
    """No ztunnel listens in the test pod: doctor's findings name ztunnel, never the sidecar or Envoy."""
    pod = topology.pod
    apply_ambient(pod, AmbientSpec(redirect_dns=True), backend=backend)
    verdicts = []
    for packet, _, _ in CASES:
        out = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "explain", "--netns", pod.path, packet],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        verdicts += [ln for ln in out.stdout.splitlines() if "verdict:" in ln]
    assert any("(outbound capture: ztunnel's outbound listener)" in v for v in verdicts), verdicts
    assert any("(DNS capture: ztunnel's DNS proxy)" in v for v in verdicts), verdicts
    assert any("(inbound capture: ztunnel's inbound listener)" in v for v in verdicts), verdicts
    report = _doctor(pod.path)
    assert "proxy-not-listening" in report and "check that ztunnel runs on this node" in report, report
    assert "ztunnel's DNS proxy must be on" in report, report
    text = " ".join(verdicts) + report
    assert "sidecar" not in text and "Envoy" not in text and "istio-proxy" not in text, text


def test_a_sidecar_pod_is_still_explained_as_a_sidecar(topology: Topology) -> None:
    from meshnet.apply.applier import apply_spec
    from meshnet.spec.flags import parse_istio_args

    spec, _ = parse_istio_args(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*"], {})
    apply_spec(topology.pod, spec, backend="iptables-nft")
    out = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "explain", "--netns", topology.pod.path,
                          CASES[0][0]], capture_output=True, text=True, timeout=60)
    assert "(outbound capture: the sidecar's outbound listener)" in out.stdout, out.stdout
