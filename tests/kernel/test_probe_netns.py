"""`meshnet probe collision|interception` against real pods in mn- namespaces."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from harness.ct_scenarios import PROBE_CLI, ROOT, hold_server, install_redirect, install_tproxy
from harness.topology import Topology

pytestmark = pytest.mark.netns


def probe(*args: str) -> tuple[int, dict[str, Any], str]:
    cp = subprocess.run([*PROBE_CLI, *args, "--json"], capture_output=True, text=True, timeout=90, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
    return cp.returncode, (json.loads(cp.stdout) if cp.stdout.strip() else {}), cp.stderr


def test_collision_probe_redirect_is_repaired(topology: Topology) -> None:
    install_redirect(topology.pod)
    hold_server(topology)
    rc, out, err = probe("collision", "--netns", topology.peer.path, "--target", topology.pod_ip4,
                         "--ports", "9080,8080", "--source-port", "42000")
    assert rc == 0, err
    assert out["verdict"] == "ok"
    assert out["syn"][0]["result"] == "connected"
    assert out["syn"][1]["result"] == "syn-ack" and out["syn"][1]["from_port"] == 8080
    assert [r["result"] for r in out["connect"]] == ["connected", "connected"]


def test_collision_probe_transparent_listener_hangs(topology: Topology) -> None:
    install_redirect(topology.pod)
    hold_server(topology, transparent=True)
    rc, out, err = probe("collision", "--netns", topology.peer.path, "--target", topology.pod_ip4,
                         "--ports", "9080,8080", "--source-port", "42010", "--timeout", "2")
    assert rc == 1, (err, out)
    assert out["verdict"] == "hang"
    syn = out["syn"][1]
    assert syn["result"] == "challenge-ack" and syn["from_port"] == 9080, syn  # A's socket answered
    assert out["connect"][1]["result"] == "timeout"


def test_interception_probe_redirect_and_tproxy(topology: Topology) -> None:
    install_redirect(topology.pod)
    rc, out, err = probe("interception", "--netns", topology.pod.path, "--peer-netns", topology.peer.path,
                         "--pod-ip", topology.pod_ip4, "--target", topology.peer_ip4)
    assert rc == 0, (err, out)
    assert out["inbound"]["captured"] and out["inbound"]["mode"] == "redirect"
    assert out["inbound"]["landed"]["orig_dst"] == [topology.pod_ip4, 8080]
    assert out["outbound"]["captured"] and out["outbound"]["landed"]["orig_dst"] == [topology.peer_ip4, 80]


def test_interception_probe_tproxy(topology: Topology) -> None:
    install_tproxy(topology.pod)
    rc, out, err = probe("interception", "--netns", topology.pod.path, "--peer-netns", topology.peer.path,
                         "--pod-ip", topology.pod_ip4)
    assert rc == 0, (err, out)
    assert out["inbound"]["captured"] and out["inbound"]["mode"] == "tproxy"
    assert out["inbound"]["landed"]["local"] == [topology.pod_ip4, 8080]


def test_interception_probe_without_rules_is_not_captured(topology: Topology) -> None:
    rc, out, err = probe("interception", "--netns", topology.pod.path, "--peer-netns", topology.peer.path,
                         "--pod-ip", topology.pod_ip4, "--target", topology.peer_ip4)
    assert rc == 1, (err, out)
    assert not out["inbound"]["captured"] and out["inbound"]["connect"] == "refused"
    assert not out["outbound"]["captured"]


@pytest.mark.parametrize("args,msg", [
    (["collision", "--netns", "mn-does-not-exist-x", "--target", "10.0.0.1"], "not found"),
    (["collision", "--netns", "/proc/self/ns/net", "--target", "10.0.0.1", "--ports", "80"], "at least two"),
    (["collision", "--netns", "/proc/self/ns/net", "--target", "nope"], "IP address"),
    (["interception", "--netns", "/proc/self/ns/net"], "--peer-netns"),
])
def test_probe_bad_input_is_one_line(args: list[str], msg: str) -> None:
    cp = subprocess.run([*PROBE_CLI, *args], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in cp.stderr, cp.stderr
