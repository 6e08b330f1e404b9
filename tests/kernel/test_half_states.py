"""Half states found without a spec: each built by hand in its own `mn-` namespace, then doctor
(and status) must name exactly that state, and a clean counter-case must not.

The states are what interrupted or concurrent runs leave (issue 10): reconcile guardrails that
blackhole the pod, TPROXY policy routing without its rules (and the reverse), IPv4-only rules in
a pod with global IPv6 addresses; and a pod with `lo` down, which used to be an internal error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest
from harness.topology import Topology
from harness.traffic_helpers import istio_spec

from meshnet.apply.applier import apply_spec, prepare
from meshnet.apply.netns import Netns
from meshnet.diagnose.doctor import diagnose
from meshnet.spec.spec import Spec

pytestmark = [pytest.mark.netns]
PROXY_TCP = [15001, 15006]
GUARDRAILS = [(chain, proto) for chain in ("INPUT", "FORWARD", "OUTPUT") for proto in ("tcp", "udp")]




def meshnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def problems(t: Topology, host: Netns, spec: Spec | None = None) -> dict[str, list[str]]:
    return {f.kind: f.evidence for f in diagnose(t.pod, spec, host).problems}


def ready(t: Topology, spec: Spec, backend: str = "iptables-nft", transparent: bool = False) -> None:
    apply_spec(t.pod, spec, backend=backend)
    t.start_server(t.pod, "proxy", tcp_ports=PROXY_TCP, uid=1337, transparent=transparent)


def status_json(t: Topology) -> tuple[int, dict[str, Any]]:
    cp = meshnet("status", "--netns", t.pod.label, "--json")
    assert cp.returncode in (0, 1), cp.stderr
    return cp.returncode, json.loads(cp.stdout)


def connects(t: Topology, port: int = 8080) -> bool:
    """A real TCP connect from the peer to the pod (the REDIRECT rules send it to the proxy)."""
    s = t.peer.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((t.pod_ip4, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------- leftover guardrails
@pytest.mark.parametrize("tool", ["iptables-nft", "ip6tables-nft", "iptables-legacy"])
def test_leftover_guardrails_are_a_critical_pod_blackholed_finding(topo: Topology, quiet_host: Netns,
                                                                  tool: str) -> None:
    ready(topo, istio_spec())
    assert problems(topo, quiet_host) == {}
    assert connects(topo)
    assert status_json(topo)[1]["in_sync"] is True
    for chain, proto in GUARDRAILS:  # what an istio-iptables --reconcile killed halfway leaves
        topo.pod.run([tool, "-t", "filter", "-I", chain, "1", "-p", proto, "-j", "DROP"])
    if tool.startswith("iptables"):
        assert not connects(topo)  # really blackholed
    found = problems(topo, quiet_host)
    assert set(found) == {"leftover-guardrails"}, found
    assert len(found["leftover-guardrails"]) == 6
    where = f"iptables-{tool.split('-')[1]} v{6 if tool.startswith('ip6') else 4} -t filter -A "
    assert all(e.startswith(where) for e in found["leftover-guardrails"]), found
    code, doc = status_json(topo)
    assert code == 1 and doc["in_sync"] is False and doc["healthy"] is False
    assert [f["kind"] for f in doc["findings"]] == ["leftover-guardrails"]
    assert "pod blackholed" in doc["findings"][0]["summary"]
    cp = meshnet("doctor", "--netns", topo.pod.label, "--host-netns", quiet_host.path)
    assert cp.returncode == 1 and "pod blackholed" in cp.stdout


def test_filter_rules_that_only_resemble_guardrails_are_not_reported(topo: Topology, quiet_host: Netns) -> None:
    ready(topo, istio_spec())
    for rule in (["INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"],
                 ["OUTPUT", "-s", "10.0.0.0/8", "-p", "udp", "-j", "DROP"],
                 ["FORWARD", "-p", "tcp", "-j", "REJECT"],
                 ["INPUT", "-p", "icmp", "-j", "DROP"]):
        topo.pod.run(["iptables-nft", "-t", "filter", "-A", *rule])
    assert problems(topo, quiet_host) == {}
    code, doc = status_json(topo)
    assert (code, doc["in_sync"], doc["findings"]) == (0, True, [])


# --------------------------------------------------------------- TPROXY routing halves
def test_istio_policy_routing_without_tproxy_rules_is_an_orphan(topo: Topology, quiet_host: Netns) -> None:
    ready(topo, istio_spec())  # REDIRECT: no TPROXY rule sets a mark
    assert problems(topo, quiet_host) == {}
    # What the concurrent writers of issue 10 left: an IPv6 rule without rules or route.
    topo.pod.run(["ip", "-6", "rule", "add", "fwmark", "1337", "lookup", "133"])
    found = problems(topo, quiet_host)
    assert set(found) == {"tproxy-routing-orphan"}, found
    assert found["tproxy-routing-orphan"] == [
        "ip -6 rule fwmark 0x539 lookup 133 (without `local default dev lo` in table 133), no TPROXY rule sets "
        "mark 0x539 in IPv6"]
    code, doc = status_json(topo)  # a warning: listed, not "out of sync"
    assert (code, doc["in_sync"], doc["healthy"]) == (0, True, False)
    assert [f["kind"] for f in doc["findings"]] == ["tproxy-routing-orphan"]
    topo.pod.run(["ip", "-6", "rule", "del", "fwmark", "1337", "lookup", "133"])
    # What `-m TPROXY -r 255` used to leave after cleanup (issue 10, defect 6): Istio's mark, table local.
    topo.pod.run(["ip", "rule", "add", "fwmark", "1337", "lookup", "local"])
    found = problems(topo, quiet_host)
    assert set(found) == {"tproxy-routing-orphan"} and "lookup 255" in found["tproxy-routing-orphan"][0], found
    topo.pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "local"])
    # The route alone (a rollback that removed the rule first) is Istio's half too.
    topo.pod.run(["ip", "route", "add", "local", "default", "dev", "lo", "table", "133"])
    found = problems(topo, quiet_host)
    assert set(found) == {"tproxy-routing-orphan"}, found
    assert "table 133 with no fwmark rule" in found["tproxy-routing-orphan"][0]


def test_tproxy_like_routing_of_someone_else_is_only_noted(topo: Topology, quiet_host: Netns) -> None:
    ready(topo, istio_spec())
    topo.pod.run(["ip", "rule", "add", "fwmark", "1", "lookup", "100"])
    topo.pod.run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"])
    report = diagnose(topo.pod, None, quiet_host)
    assert report.problems == [], "\n".join(report.lines())
    assert "tproxy-like-routing" in {f.kind for f in report.findings}
    assert status_json(topo)[0] == 0


def test_tproxy_rules_without_ipv6_routing_are_reported_by_status_too(topo: Topology, quiet_host: Netns) -> None:
    ready(topo, istio_spec("-m", "TPROXY"), transparent=True)
    assert problems(topo, quiet_host) == {}
    assert status_json(topo)[1]["in_sync"] is True
    topo.pod.run(["ip", "-6", "rule", "del", "fwmark", "1337", "lookup", "133"])
    found = problems(topo, quiet_host)
    assert set(found) == {"tproxy-routing-missing"}, found
    assert all("IPv6" in e for e in found["tproxy-routing-missing"])
    code, doc = status_json(topo)
    assert code == 1 and [f["kind"] for f in doc["findings"]] == ["tproxy-routing-missing"]


# --------------------------------------------------------------- IPv4-only in a dual-stack pod
def test_ipv4_only_rules_in_a_pod_with_global_ipv6(topo: Topology, quiet_host: Netns) -> None:
    assert topo.pod_ip6  # the topology's pod has a global (ULA) IPv6 address
    ready(topo, istio_spec().with_changes(enable_ipv6=False))
    found = problems(topo, quiet_host)
    assert set(found) == {"ipv6-not-intercepted"}, found
    assert any(topo.pod_ip6 in e for e in found["ipv6-not-intercepted"])
    code, doc = status_json(topo)
    assert (code, doc["healthy"]) == (0, False)
    # A spec that says IPv4 only (Istio's rule: IPv4 first, no dual stack) asked for it: context only.
    report = diagnose(topo.pod, istio_spec().with_changes(enable_ipv6=False), quiet_host)
    assert report.problems == [] and "ipv6-not-intercepted" in {f.kind for f in report.findings}


def test_ipv4_only_rules_in_an_ipv4_only_pod_are_fine(quiet_host: Netns) -> None:
    with Topology(ipv6=False) as t:
        ready(t, istio_spec().with_changes(enable_ipv6=False))
        assert problems(t, quiet_host) == {}


def test_dual_stack_rules_in_a_dual_stack_pod_are_fine(topo: Topology, quiet_host: Netns) -> None:
    ready(topo, istio_spec())
    assert problems(topo, quiet_host) == {}


# --------------------------------------------------------------- lo down
def test_ipv6_only_pod_with_lo_down_is_detected_not_an_internal_error() -> None:
    """An empty FIB (lo down, no IPv4 address) read through the prefetched snapshot used to raise
    FileNotFoundError: /proc/net/fib_trie out of prepare() (istio-iptables, CNI ADD)."""
    with Topology(ipv6=True) as t:
        t.pod.run(["ip", "link", "set", "lo", "down"])
        for dev in ("eth0", "lo"):  # a down lo keeps 127.0.0.1 in the FIB: drop it too
            t.pod.run(["ip", "-4", "addr", "flush", "dev", dev])
        assert t.pod.read_proc_net("fib_trie").strip() == ""
        spec, backend = prepare(t.pod, istio_spec().with_changes(enable_ipv6=False), "auto")
        assert spec.enable_ipv6 is True and backend in ("iptables-nft", "iptables-legacy")
        cp = meshnet("apply", "--netns", t.pod.label, "-p", "15001", "-u", "1337", "-b", "*")
        assert cp.returncode == 0 and "internal error" not in cp.stderr, cp.stderr
        assert "ISTIO_OUTPUT" in t.pod.run(["ip6tables-nft-save"]).stdout
