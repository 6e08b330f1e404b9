"""Units of the node-wide and bundle machinery: replayed namespace reads, the conntrack snapshot's JSON
round trip, the time-bounded parallel map, and the agent's metrics folding (no root needed)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from meshnet.apply.netns import NetnsError
from meshnet.diagnose.bundle.source import Replay, has_tool
from meshnet.diagnose.conntrack.entry import CtEntry
from meshnet.diagnose.conntrack.findings import analyze
from meshnet.diagnose.conntrack.netlink import TableScan
from meshnet.diagnose.conntrack.rules import Capture, RulesInfo
from meshnet.diagnose.conntrack.snapshot import Snapshot
from meshnet.diagnose.conntrack.snapshot_json import dump, load
from meshnet.diagnose.conntrack.sockets import TcpSock
from meshnet.diagnose.node import bounded


def replay() -> Replay:
    return Replay("pod", "/run/netns/pod", {
        "commands": [{"argv": ["iptables-nft-save", "-c"], "returncode": 0, "stdout": "*nat\nCOMMIT\n", "stderr": ""},
                     {"argv": ["nft", "-j", "list", "ruleset"], "returncode": 1, "stdout": "", "stderr": "boom\n"}],
        "proc_net": {"tcp": "header\n", "ip_tables_names": None}, "sysctls": {"net.ipv4.ip_forward": "0"},
        "tools": {"nft": True}})


def test_replay_answers_only_what_was_recorded() -> None:
    r = replay()
    assert r.run(["iptables-nft-save", "-c"]).stdout == "*nat\nCOMMIT\n"
    assert r.run(["nft", "-j", "list", "ruleset"], check=False).returncode == 1
    with pytest.raises(NetnsError, match="exit status 1: boom"):
        r.run(["nft", "-j", "list", "ruleset"])
    with pytest.raises(NetnsError, match="not recorded"):
        r.run(["iptables-legacy-save", "-c"])
    with pytest.raises(NetnsError, match="not recorded"):
        r.run(["iptables-nft-save", "-c"], input="x")  # writes are never replayed
    assert r.read_proc_net("tcp") == "header\n"
    with pytest.raises(FileNotFoundError):
        r.read_proc_net("ip_tables_names")  # absent on the node, as recorded
    with pytest.raises(NetnsError):
        r.read_proc_net("udp")
    assert r.sysctl("net.ipv4.ip_forward") == "0"
    assert has_tool(r, "nft") and not has_tool(r, "iptables-legacy-restore")
    with pytest.raises(NetnsError, match="not available offline"):
        r.socket(1, 2)
    assert not r.is_current()


def _snapshot() -> Snapshot:
    a = CtEntry(4, 6, "10.99.0.1", "10.99.0.2", 40000, 9080, "10.99.0.2", "10.99.0.1", 15006, 40000,
                state="ESTABLISHED", assured=True, timeout=431999, status=14)
    b = CtEntry(4, 6, "10.99.0.1", "10.99.0.2", 40000, 8080, "10.99.0.2", "10.99.0.1", 15006, 26589,
                state="ESTABLISHED", assured=True, timeout=431998, zone=0, extra={"x": "y"})
    scan = TableScan.from_entries([a, b])
    rules = RulesInfo(captures=[Capture("redirect", "inbound", 15006, None, frozenset({15008, 15090}),
                                        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006", "iptables-nft")],
                      sources=["iptables-nft"])
    return Snapshot("netns pod", scan, stats_cpu=[{"insert_failed": 1, "drop": 0}], count=2, max=65536,
                    counters={"TcpExtTCPChallengeACK": 3}, rules=rules,
                    sockets=[TcpSock(4, "ESTAB", "10.99.0.2", 15006, "10.99.0.1", 26589, False, 1337, 0)],
                    kernel="6.1.0-56-amd64", early_demux=1, notes=["n"])


def test_snapshot_json_round_trip_gives_the_same_findings() -> None:
    snap = _snapshot()
    back = load(json.loads(json.dumps(dump(snap))))
    assert back.scan.nat == snap.scan.nat and back.scan.capture_ports == snap.scan.capture_ports
    assert back.rules == snap.rules and back.sockets == snap.sockets
    assert (back.kernel, back.early_demux, back.count, back.max) == ("6.1.0-56-amd64", 1, 2, 65536)
    live = [f.to_json() for f in analyze(snap)]
    assert live and [f.to_json() for f in analyze(back)] == live
    assert "tuple-collision" in {f["kind"] for f in live}
    with pytest.raises(ValueError):
        load({**dump(snap), "format": 99})


def test_bounded_runs_at_most_jobs_at_once_and_times_out() -> None:
    running, peak = [0], [0]
    lock = threading.Lock()
    release = threading.Event()

    def fn(i: int) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if i == 3:
                release.wait(30)  # stuck until the test ends
            if i == 4:
                raise RuntimeError("broken")
            time.sleep(0.05)
            return f"ok {i}"
        finally:
            with lock:
                running[0] -= 1

    try:
        out = bounded(list(range(8)), fn, lambda i, why: f"failed {i}: {why}", jobs=2, timeout=1.0)
    finally:
        release.set()
    assert out[3] == "failed 3: timed out after 1s"
    assert out[4] == "failed 4: RuntimeError: broken"
    assert [o for i, o in enumerate(out) if i not in (3, 4)] == [f"ok {i}" for i in (0, 1, 2, 5, 6, 7)]
    assert peak[0] <= 2


def test_agent_metrics_fold_reports_and_sweeps() -> None:
    from meshnet.cni.metrics import AgentMetrics, parse_address

    m = AgentMetrics()
    for cmd, code, cid in (("ADD", 0, "a"), ("ADD", 0, "b"), ("DEL", 0, "a"), ("ADD", 1, "c")):
        m.add_report(json.dumps({"command": cmd, "code": code, "seconds": 0.02, "container": cid}).encode())
    m.add_report(b"garbage")
    m.add_sweep({"findings": {"proxy-not-listening/critical": 2}, "namespaces": {"healthy": 3, "findings": 2},
                 "seconds": 1.5})
    text = m.exposition().decode()
    assert 'meshnet_cni_requests_total{command="ADD",result="success"} 2.0' in text
    assert 'meshnet_cni_requests_total{command="ADD",result="error"} 1.0' in text
    assert 'meshnet_cni_request_duration_seconds_bucket{command="ADD",le="0.025"} 3.0' in text
    assert "meshnet_cni_pods_programmed 1.0" in text
    assert 'meshnet_node_findings{kind="proxy-not-listening",severity="critical"} 2.0' in text
    m.add_sweep({"findings": {}, "namespaces": {"healthy": 5}, "seconds": 1.0})
    assert "proxy-not-listening" not in m.exposition().decode()  # gone once the sweep no longer sees it
    assert parse_address("15099") == ("0.0.0.0", 15099) and parse_address("[::1]:9") == ("::1", 9)
    for bad in ("x", "1:0", "99999"):
        with pytest.raises(ValueError):
            parse_address(bad)
