"""The analyzer against real collisions in mn- namespaces (kernel 6.18 here; see the collision doc)."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from harness.ct_scenarios import (
    CLI,
    ROOT,
    analyze,
    finding,
    hold_server,
    install_redirect,
    install_tproxy,
    kinds,
    race_client,
    readline,
    seq_client,
)
from harness.topology import Topology, connect

pytestmark = pytest.mark.netns

COLLISION_KINDS = {"tuple-collision", "collision-hang", "collision-race-drops"}


def _seq(topo: Topology, sport: int, transparent: bool = False) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    hold_server(topo, transparent=transparent)
    cli = seq_client(topo, sport)
    a = json.loads(readline(cli, 5))
    assert a["ok"], a
    return cli, a


def test_remap_sequential_reports_tuple_collision(topology: Topology) -> None:
    install_redirect(topology.pod)
    cli, a = _seq(topology, 40000)
    b = json.loads(readline(cli, 5))
    assert b["ok"] and b["after"] < 0.5, b  # repaired at once on this kernel
    new_port = b["server"]["peer"][1]
    assert new_port != 40000 and b["server"]["orig_dst"] == [topology.pod_ip4, 8080]

    rc, data, err = analyze("--netns", topology.pod.path)
    assert rc == 1, err
    assert set(kinds(data)) & COLLISION_KINDS == {"tuple-collision"}
    assert "collision-risk" not in kinds(data)  # the observed collision absorbs the prediction
    col = finding(data, "tuple-collision")["details"]["collisions"]
    assert len(col) == 1
    c = col[0]
    assert c["client"] == f"{topology.peer_ip4}:40000"
    assert sorted(c["ports"]) == [8080, 9080]
    assert c["capture"] == f"{topology.pod_ip4}:15006"
    assert [(r["dport"], r["new_sport"]) for r in c["rewritten"]] == [(8080, new_port)]
    ev = [e["type"] for e in finding(data, "tuple-collision")["evidence"]]
    assert "rule" in ev and "socket" in ev  # the funnelling rule and the proxy's socket with the new port


def test_hang_with_transparent_listener_reports_collision_hang(topology: Topology) -> None:
    install_redirect(topology.pod)
    cli, a = _seq(topology, 40010, transparent=True)
    time.sleep(2.5)  # B is retransmitting its SYN by now; each one gets a challenge ACK from :9080
    rc, data, err = analyze("--netns", topology.pod.path)
    assert rc == 1, err
    assert set(kinds(data)) & COLLISION_KINDS == {"collision-hang"}
    f = finding(data, "collision-hang")
    assert f["severity"] == "critical"
    c = f["details"]["collisions"][0]
    assert c["client"] == f"{topology.peer_ip4}:40010"
    assert [(r["dport"], r["state"], r["unreplied"]) for r in c["rewritten"]] == [(8080, "SYN_SENT", True)]
    assert "TRANSPARENT" in f["details"]["reason"]
    counters = {e["name"]: e["value"] for e in f["evidence"] if e["type"] == "counter"}
    assert counters["TcpExtTCPSYNChallenge"] >= 1
    # and the client really fails: the SYNs never get a SYN-ACK
    assert cli.stdin is not None
    b = json.loads(readline(cli, 15))
    assert not b["ok"] and "timed out" in b["error"], b


def _collisions(data: dict[str, Any]) -> dict[str, str]:
    """client -> kind, one entry per collision finding (each finding must name exactly one group)."""
    out = {}
    for f in data["findings"]:
        if f["kind"] in ("tuple-collision", "collision-hang"):
            (c,) = f["details"]["collisions"]
            out[c["client"]] = f["kind"]
    return out


def test_each_group_is_its_own_finding(topology: Topology) -> None:
    """A hanging group (transparent listener) and, once early demux is off, a remapped ESTABLISHED
    pair of another client: two findings, each with its own kind."""
    install_redirect(topology.pod)
    hold_server(topology, transparent=True)
    a = seq_client(topology, 40030)
    assert json.loads(readline(a, 5))["ok"]
    time.sleep(2.5)  # A's second SYN is retransmitting into the sibling's socket by now
    rc, data, err = analyze("--netns", topology.pod.path)
    assert _collisions(data) == {f"{topology.peer_ip4}:40030": "collision-hang"}, data["findings"]
    topology.pod.run(["sysctl", "-qw", "net.ipv4.tcp_early_demux=0"])  # the remap now reaches the listener
    b = seq_client(topology, 40031)
    assert json.loads(readline(b, 5))["ok"]
    rb = json.loads(readline(b, 5))
    assert rb["ok"] and rb["server"]["peer"][1] != 40031, rb  # remapped, connected
    rc, data, err = analyze("--netns", topology.pod.path)
    got = _collisions(data)
    assert got[f"{topology.peer_ip4}:40031"] == "tuple-collision", data["findings"]
    # A still hangs, or its next retransmit (early demux now off) got through remapped: either way its own
    assert got[f"{topology.peer_ip4}:40030"] in ("collision-hang", "tuple-collision") and len(got) == 2
    assert rc == 1, err


def test_race_reports_race_drops(topology: Topology) -> None:
    install_redirect(topology.pod)
    hold_server(topology)
    cli = race_client(topology, 41000, rounds=400)
    rounds = []
    while True:
        line = readline(cli, 60)
        if line == "DONE":
            break
        rounds.append(json.loads(line))
    if not rounds[-1]["slow"]:
        pytest.fail(f"no SYN lost to the race in {len(rounds)} rounds (expected ~59% per round)")
    rc, data, err = analyze("--netns", topology.pod.path)
    assert rc == 1, err
    # the counters are the race; every remapped client in the table is its own tuple-collision
    assert set(kinds(data)) & COLLISION_KINDS == {"collision-race-drops", "tuple-collision"}
    f = finding(data, "collision-race-drops")
    assert f["details"]["counters"]["insert_failed"] >= 1
    assert data["stats"]["conntrack"]["insert_failed"] >= 1
    clients = {c["client"] for c in f["details"]["collisions"]}
    assert f"{topology.peer_ip4}:{rounds[-1]['sport']}" in clients
    own = [x for x in data["findings"] if x["kind"] == "tuple-collision"]
    assert all(len(x["details"]["collisions"]) == 1 for x in own)
    assert {x["details"]["collisions"][0]["client"] for x in own} == clients


def test_healthy_redirect_pod_has_no_collision(topology: Topology) -> None:
    install_redirect(topology.pod)
    hold_server(topology)
    for port in (8080, 9080, 8080, 9080):
        r = connect(topology.peer, topology.pod_ip4, port, timeout=3)
        assert "error" not in r, r
    rc, data, err = analyze("--netns", topology.pod.path)
    assert not set(kinds(data)) & COLLISION_KINDS, data["findings"]
    risk = finding(data, "collision-risk")  # the rules funnel every port into 15006 ...
    assert risk["severity"] == "info"  # ... but on >= 6.7 with a plain listener it is repaired
    assert risk["details"]["capture_ports"] == [15006]
    assert rc == 0, (err, data["findings"])
    assert data["stats"]["capture_ports"] == {"15006": 4}


def test_tproxy_pod_same_source_port_no_collision(topology: Topology) -> None:
    install_tproxy(topology.pod)
    cli, a = _seq(topology, 40020, transparent=True)
    b = json.loads(readline(cli, 5))
    assert b["ok"] and b["server"]["peer"][1] == 40020, b  # port kept: no NAT at all
    rc, data, err = analyze("--netns", topology.pod.path)
    assert rc == 0, (err, data)
    assert kinds(data) == []
    assert any(c["kind"] == "tproxy" and c["direction"] == "inbound" for c in data["stats"]["captures"])


def _watch(topo: Topology, duration: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([*CLI, "watch", "--netns", topo.pod.path, "--duration", str(duration), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(1.0)  # subscribed and seeded
    return p


def test_watch_reports_remap_and_hang_live(topology: Topology) -> None:
    install_redirect(topology.pod)
    w = _watch(topology, 6)
    try:
        cli, _ = _seq(topology, 40030, transparent=True)
        out, err = w.communicate(timeout=20)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    events = [json.loads(x) for x in out.splitlines()]
    assert w.returncode == 1, err
    got = [(e["kind"], e.get("client"), e.get("dport")) for e in events]
    client = f"{topology.peer_ip4}:40030"
    assert ("tuple-collision", client, 8080) in got and ("collision-hang", client, 8080) in got, got
