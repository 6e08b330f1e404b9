"""Unit cases on top of the real-kernel tests: hand-written formats, rules, Envoy logs, findings, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness.ct_scenarios import CLI, GOLDEN, ROOT

from meshnet.diagnose.conntrack.envoy import parse_line
from meshnet.diagnose.conntrack.findings import analyze, exit_code
from meshnet.diagnose.conntrack.kernel import has_demux_fix, parse_netstat
from meshnet.diagnose.conntrack.netlink import TableScan
from meshnet.diagnose.conntrack.rules import analyze_iptables, analyze_nft
from meshnet.diagnose.conntrack.snapshot import Snapshot
from meshnet.diagnose.conntrack.sockets import TcpSock
from meshnet.diagnose.conntrack.textparse import parse_entry_line, parse_lines, parse_proc_stat

A = "tcp 6 431999 ESTABLISHED src=10.99.0.1 dst=10.99.0.2 sport=40010 dport=9080 src=10.99.0.2 " \
    "dst=10.99.0.1 sport=15006 dport=40010 [ASSURED] mark=0 use=1"
B = "ipv4 2 tcp 6 115 SYN_SENT src=10.99.0.1 dst=10.99.0.2 sport=40010 dport=8080 [UNREPLIED] " \
    "src=10.99.0.2 dst=10.99.0.1 sport=15006 dport=26589 mark=0 zone=0 use=2"


def test_parse_formats() -> None:
    a, b = parse_entry_line(A), parse_entry_line(B)
    assert a and b
    assert (a.state, a.assured, a.unreplied, a.rsport, a.src_rewritten) == ("ESTABLISHED", True, False, 15006, False)
    assert (b.state, b.unreplied, b.rdport, b.src_rewritten, b.dst_rewritten) == ("SYN_SENT", True, 26589, True, True)
    icmp = parse_entry_line("icmp 1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 "
                            "type=0 code=0 id=7 mark=0 use=1 id=4242")
    assert icmp and icmp.id == 4242 and not icmp.src_rewritten
    v6 = parse_entry_line("tcp 6 10 CLOSE src=fd00::1 dst=fd00::2 sport=1 dport=2 src=fd00::2 dst=fd00::1 "
                          "sport=2 dport=1 mark=0 use=1")
    assert v6 and v6.family == 6
    assert parse_entry_line("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.") is None
    assert parse_entry_line("garbage here") is None


def test_parse_stats_and_proc_stat() -> None:
    data = parse_lines(["cpu=0 found=2 invalid=0 insert=0 insert_failed=3 drop=3 early_drop=0 error=0 "
                        "search_restart=0 clash_resolve=0 chain_toolong=0", "x y z"])
    assert data.stats_cpu[0]["insert_failed"] == 3 and data.skipped == 1
    rows = parse_proc_stat("entries  clashres found new invalid ignore delete chainlength insert insert_failed "
                           "drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"
                           "00000004  00000000 0000000c 00000000 00000000 00000000 00000000 00000000 00000000 "
                           "00000003 00000003 00000000 00000000 00000000 00000000 00000000 00000000\n")
    assert rows[0]["found"] == 12 and rows[0]["insert_failed"] == 3 and rows[0]["drop"] == 3


def test_netstat_and_kernel() -> None:
    c = parse_netstat("TcpExt: SyncookiesSent TCPSYNChallenge\nTcpExt: 0 7\nIpExt: InNoRoutes\nIpExt: 1\n")
    assert c == {"TcpExtSyncookiesSent": 0, "TcpExtTCPSYNChallenge": 7, "IpExtInNoRoutes": 1}
    assert has_demux_fix("6.1.0-56-amd64") is False and has_demux_fix("6.7.0") is True
    assert has_demux_fix("6.18.44-fc") is True and has_demux_fix(None) is None


def test_rules_istio_goldens() -> None:
    basic = analyze_iptables((GOLDEN / "basic.txt.golden").read_text())
    (f,) = basic.inbound_funnels
    assert (f.kind, f.to_port, f.dports, sorted(f.excluded)) == ("redirect", 15006, None, [15008, 15020, 15021, 15090])
    assert not basic.tproxy_inbound and basic.snat == []
    tp = analyze_iptables((GOLDEN / "tproxy.txt.golden").read_text())
    assert tp.inbound_funnels == [] and tp.tproxy_inbound
    ports = analyze_iptables("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 80 -j REDIRECT "
                             "--to-ports 15006\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n")
    assert ports.inbound_funnels == [] and ports.captures[0].dports == frozenset({80})  # one port: no funnel
    assert ports.snat


def test_rules_native_nft() -> None:
    text = """table inet mesh {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport { 15008, 15090 } return
		meta l4proto tcp redirect to :15006
	}
}
"""
    info = analyze_nft(text)
    (f,) = info.inbound_funnels
    assert f.to_port == 15006 and f.excluded == {15008, 15090}


def _snap(lines: list[str], **kw: Any) -> Snapshot:  # kw: further Snapshot fields
    data = parse_lines(lines)
    return Snapshot(source="test", scan=TableScan.from_entries(data.entries), **kw)


def test_findings_hang_vs_remap_and_envoy_correlation() -> None:
    hang = analyze(_snap([A, B], kernel="6.1.0-56-amd64", counters={"TcpExtTCPSYNChallenge": 7}))
    assert [f.kind for f in hang] == ["collision-hang"] and "older than 6.7" in hang[0].details["reason"]
    sock = TcpSock(2, "LISTEN", "0.0.0.0", 15006, "0.0.0.0", 0, True, 0, 0)
    why = analyze(_snap([A, B], kernel="6.18.1", sockets=[sock]))[0].details["reason"]
    assert "IP_TRANSPARENT" in why
    remap = A.replace("40010 dport=9080", "40010 dport=9080"), B.replace("SYN_SENT", "ESTABLISHED").replace(
        "[UNREPLIED] ", "")
    fs = analyze(_snap(list(remap)))
    assert [f.kind for f in fs] == ["tuple-collision"] and exit_code(fs) == 1
    env = [parse_line(1, '[2026-01-01T00:00:00.000Z] "GET / HTTP/1.1" 503 UF upstream_reset - "-" 0 91 8002 - '
                         '"-" "curl" "id" "svc:8080" "10.99.0.2:8080" outbound|8080||svc 10.99.0.1:40010 '
                         '10.96.0.1:8080 10.99.0.1:51000 - default'),
           parse_line(2, json.dumps({"start_time": "2026-01-01T00:00:01Z", "response_code": 503,
                                     "response_flags": "UF", "upstream_local_address": "10.7.7.7:1"})),
           parse_line(3, json.dumps({"response_code": 200, "response_flags": "-"}))]
    snap = _snap(list(remap))
    snap.envoy = [e for e in env if e]
    e = [f for f in analyze(snap) if f.kind == "envoy-503-uf"][0]
    assert e.details == {"lines": 2, "correlated": 1} and e.severity == "critical"


# The measured state: one long-lived remapped ESTABLISHED pair (client :40000 to :9080 and
# :8080, the :8080 reply port rewritten) next to a few raced SYNs of other clients.
PAIR = [A.replace("40010", "40000"),
        B.replace("40010", "40000").replace("SYN_SENT", "ESTABLISHED").replace("[UNREPLIED] ", "")]
RACED = [B.replace("40010", str(41000 + i)).replace("26589", str(30000 + i)) for i in range(3)]


def test_findings_remapped_pair_is_tuple_collision_next_to_race_drops() -> None:
    fs = analyze(_snap(PAIR, kernel="6.18.1", stats_cpu=[{"insert_failed": 3, "drop": 3}]))
    assert sorted(f.kind for f in fs) == ["collision-race-drops", "tuple-collision"]
    (tc,) = [f for f in fs if f.kind == "tuple-collision"]
    assert [c["client"] for c in tc.details["collisions"]] == ["10.99.0.1:40000"]
    assert tc.details["collisions"][0]["rewritten"][0]["dport"] == 8080


def test_findings_each_group_its_own_finding_on_61() -> None:
    """6.1: every remapped unreplied SYN hangs (siblings gone here), the ESTABLISHED pair is a remap."""
    fs = analyze(_snap(PAIR + RACED, kernel="6.1.0-56-amd64", stats_cpu=[{"insert_failed": 3, "drop": 3}]))
    by = sorted((f.kind, f.details.get("collisions", [{}])[0].get("client")) for f in fs
                if f.kind != "collision-race-drops")
    assert by == [("collision-hang", f"10.99.0.1:{41000 + i}") for i in range(3)] + \
        [("tuple-collision", "10.99.0.1:40000")]
    hang = [f for f in fs if f.kind == "collision-hang"]
    assert all(f.details["sibling_present"] is False and "older than 6.7" in f.details["reason"] for f in hang)
    assert "collision-race-drops" in {f.kind for f in fs}


def test_findings_lone_remapped_syn_depends_on_kernel() -> None:
    lone = [RACED[0]]
    assert [f.kind for f in analyze(_snap(lone, kernel="6.1.0-56-amd64"))] == ["collision-hang"]
    assert [f.kind for f in analyze(_snap(lone, kernel="6.18.1"))] == ["tuple-collision"]  # repaired on >= 6.7
    # with its sibling still there the 6.1 verdict is the same; on 6.18 a plain listener repairs it
    assert [f.kind for f in analyze(_snap([A, B], kernel="6.1.0-56-amd64"))] == ["collision-hang"]


def test_findings_table_pressure_and_clean() -> None:
    snap = _snap([A], count=950, max=1000, stats_cpu=[{"early_drop": 4}])
    assert [f.kind for f in analyze(snap)] == ["table-pressure"]
    assert analyze(_snap([A])) == [] and exit_code([]) == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args,msg", [
    (["analyze", "--netns", "x", "--pid", "1"], "not both"),  # neither: the current namespace (kubectl debug)
    (["analyze", "--netns", "mn-nope-nope"], "not found"),
    (["analyze", "--pid", "999999999"], "not found"),
    (["analyze", "--from-file", "/nonexistent/x"], "no such file"),
    (["analyze", "--from-file", "/etc/hostname", "--netns", "x"], "cannot be combined"),
    (["analyze", "--from-file", "/etc/os-release"], "no conntrack entries"),
    (["watch", "--netns", "mn-nope-nope"], "not found"),
])
def test_analyze_bad_input_is_one_line(args: list[str], msg: str) -> None:
    cp = _cli(*args)
    assert cp.returncode == 2, cp
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in cp.stderr, cp.stderr


def test_envoy_log_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "ct.txt"
    f.write_text(A + "\n")
    log = tmp_path / "envoy.log"
    log.write_text("not a log line\n")
    cp = _cli("analyze", "--from-file", str(f), "--envoy-log", str(log))
    assert cp.returncode == 2 and "no Envoy access-log lines" in cp.stderr
