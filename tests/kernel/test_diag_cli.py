"""The diagnostic commands as a user runs them: exit codes, --json, one-line errors (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness.topology import Topology
from harness.traffic_helpers import INJECTOR_FLAGS

from meshnet.apply.applier import apply_spec, spec_for_netns
from meshnet.spec.flags import parse_istio_args


def meshnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          timeout=60)


def one_line_error(cp: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr


@pytest.mark.parametrize("packet", ["tcp 10.0.0.1 -> 10.0.0.2:80 out", "sctp 1.1.1.1:1 -> 2.2.2.2:2 out",
                                    "tcp 1.1.1.1:1 -> [::1]:2 out", "tcp 1.1.1.1:1 -> 2.2.2.2:2 sideways",
                                    "tcp 1.1.1.1:1 -> 2.2.2.2:99999 out", "tcp 1.1.1.1:1 -> 2.2.2.2:2 in uid=5",
                                    "tcp 1.1.1.1:1 -> 2.2.2.2:2 out state=BOGUS"])
def test_explain_bad_packet_is_a_usage_error(packet: str) -> None:
    cp = meshnet("explain", "--netns", "mn-does-not-matter", packet)
    assert cp.returncode == 2
    one_line_error(cp)


def test_missing_namespace() -> None:
    # The diagnostic exit contract: 2 = could not inspect (never 1, which means findings or drift).
    for args in (["doctor", "--netns", "mn-nonexistent-x"], ["diff", "--netns", "mn-nonexistent-x", "-p", "15001"],
                 ["status", "--netns", "mn-nonexistent-x"], ["status", "--netns", "mn-nonexistent-x", "-p", "1"],
                 ["explain", "--netns", "mn-nonexistent-x", "tcp 1.1.1.1:1 -> 2.2.2.2:2 out uid=1"],
                 ["conntrack", "analyze", "--netns", "mn-nonexistent-x"],
                 ["conntrack", "watch", "--netns", "mn-nonexistent-x", "--duration", "1"]):
        cp = meshnet(*args)
        assert cp.returncode == 2, cp
        one_line_error(cp)
        assert "not found" in cp.stderr


def test_diff_needs_a_spec_and_a_namespace() -> None:
    cp = meshnet("diff", "--netns", "x")
    assert cp.returncode == 2
    one_line_error(cp)
    cp = meshnet("diff", "--netns", "x", "--pid", "1", "-p", "15001")  # without either: the current namespace
    assert cp.returncode == 2
    one_line_error(cp)


@pytest.mark.netns
def test_diff_explain_doctor_on_a_live_pod() -> None:
    with Topology() as topo:
        spec, _ = parse_istio_args(list(INJECTOR_FLAGS), env={})
        apply_spec(topo.pod, spec_for_netns(spec, topo.pod), backend="iptables-nft")
        ns = topo.pod.label
        same = meshnet("diff", "--netns", ns, *INJECTOR_FLAGS)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "in sync" in same.stdout
        other = meshnet("diff", "--netns", ns, *INJECTOR_FLAGS, "-d", "15090,15021", "--json")
        assert other.returncode == 1
        doc = json.loads(other.stdout)
        extra = "+ iptables -t nat -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN"
        assert [e["line"] for e in doc["entries"]] == [extra]

        ex = meshnet("explain", "--netns", ns, f"tcp {topo.pod_ip4}:41000 -> {topo.peer_ip4}:80 out uid=1000")
        assert ex.returncode == 0, ex.stderr
        assert "ISTIO_REDIRECT rule 1" in ex.stdout and "verdict: REDIRECT to :15001" in ex.stdout
        unsure = meshnet("explain", "--netns", ns, f"tcp {topo.pod_ip4}:41000 -> {topo.peer_ip4}:80 out")
        assert unsure.returncode == 1 and "uncertain" in unsure.stdout

        sick = meshnet("doctor", "--netns", ns, "--json")  # nothing listens on 15001/15006
        assert sick.returncode == 1
        # Without a spec, IPv4-only rules in this dual-stack pod are a warning too (IPv6 bypasses the proxy);
        # with the injector's spec (IPv4 first, no dual stack: Istio's rule says IPv4 only) they are context.
        assert {f["kind"] for f in json.loads(sick.stdout)["findings"] if f["severity"] != "info"} == \
            {"proxy-not-listening", "ipv6-not-intercepted"}
        topo.start_server(topo.pod, "proxy", tcp_ports=[15001, 15006], uid=1337)
        well = meshnet("doctor", "--netns", ns, *INJECTOR_FLAGS)
        assert well.returncode == 0, well.stdout
        assert "healthy" in well.stdout
