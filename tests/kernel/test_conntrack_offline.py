"""Offline readers on real `conntrack -L` output captured from a real collision, and the netlink
reader checked entry by entry against conntrack-tools on the same table."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from harness.ct_scenarios import analyze, finding, hold_server, install_redirect, kinds, readline, seq_client
from harness.topology import Topology

from meshnet.diagnose.conntrack.entry import CtEntry
from meshnet.diagnose.conntrack.netlink import CtSocket, TableScan
from meshnet.diagnose.conntrack.textparse import parse_lines

pytestmark = pytest.mark.netns


def _capture(topo: Topology, tmp_path: Path) -> tuple[dict[str, Path], int]:
    """Reproduce the remap collision, then save the table the ways a support bundle would; the files,
    and the source port the kernel gave the colliding connection."""
    install_redirect(topo.pod)
    hold_server(topo)
    cli = seq_client(topo, 40000)
    assert json.loads(readline(cli, 5))["ok"]
    b = json.loads(readline(cli, 5))
    assert b["ok"], b
    files: dict[str, Path] = {}
    for name, argv in (("plain", ["conntrack", "-L"]), ("extended", ["conntrack", "-L", "-o", "extended"])):
        out = topo.pod.run(argv).stdout
        stats = topo.pod.run(["conntrack", "-S"]).stdout
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text(out + stats)
    try:
        files["proc"] = tmp_path / "proc.txt"
        files["proc"].write_text(topo.pod.read_proc_net("nf_conntrack"))
    except FileNotFoundError:
        files.pop("proc")  # kernel without CONFIG_NF_CONNTRACK_PROCFS
    return files, int(b["server"]["peer"][1])


def test_offline_formats_give_the_live_finding(topology: Topology, tmp_path: Path) -> None:
    files, new_port = _capture(topology, tmp_path)
    rc_live, live, _ = analyze("--netns", topology.pod.path)
    live_c = finding(live, "tuple-collision")["details"]["collisions"]
    if "proc" not in files:
        print("note: no /proc/net/nf_conntrack on this kernel; that format is covered by unit cases only")
    for name, path in files.items():
        rc, data, err = analyze("--from-file", str(path))
        assert rc == 1, (name, err)
        assert kinds(data) == ["tuple-collision"], (name, data["findings"])
        c = finding(data, "tuple-collision")["details"]["collisions"]
        assert c == live_c, name
        assert c[0]["rewritten"][0]["new_sport"] == new_port
        assert data["stats"]["entries_read"] == live["stats"]["entries"], name
    # `conntrack -S` lines in the same file are read as per-CPU stats
    _, data, _ = analyze("--from-file", str(files["plain"]))
    assert data["stats"]["conntrack_per_cpu"] and len(data["stats"]["conntrack_per_cpu"]) == \
        len(live["stats"]["conntrack_per_cpu"])


def _mixed_entries(n: int) -> list[CtEntry]:
    out = []
    for i in range(n):
        sp = 20000 + i
        out.append(CtEntry(4, 6, "10.9.0.1", "10.9.0.2", sp, 80, "10.9.0.2", "10.9.0.1", 80, sp,
                           state="ESTABLISHED", assured=True, timeout=300))
        out.append(CtEntry(4, 17, "10.9.0.1", "10.9.0.3", sp, 53, "10.9.0.3", "10.9.0.1", 53, sp, timeout=30,
                           unreplied=True))
        out.append(CtEntry(6, 6, "fd00::1", "fd00::2", sp, 8080, "fd00::2", "fd00::1", 15006, sp,
                           state="SYN_SENT", unreplied=True, timeout=100))
    # a collision pair (DNAT to one port + implicit source rewrite), v4 and v6
    out.append(CtEntry(4, 6, "10.9.0.7", "10.9.0.2", 40000, 9080, "10.9.0.2", "10.9.0.7", 15006, 40000,
                       state="ESTABLISHED", assured=True, timeout=300))
    out.append(CtEntry(4, 6, "10.9.0.7", "10.9.0.2", 40000, 8080, "10.9.0.2", "10.9.0.7", 15006, 8623,
                       state="ESTABLISHED", assured=True, timeout=300))
    out.append(CtEntry(6, 6, "fd00::7", "fd00::2", 40000, 9080, "fd00::2", "fd00::7", 15006, 40000,
                       state="ESTABLISHED", assured=True, timeout=300))
    out.append(CtEntry(6, 6, "fd00::7", "fd00::2", 40000, 8080, "fd00::2", "fd00::7", 15006, 1234,
                       state="SYN_SENT", unreplied=True, timeout=100))
    return out


def _key(e: CtEntry) -> tuple[object, ...]:
    return (e.family, e.proto, e.src, e.dst, e.sport, e.dport, e.rsrc, e.rdst, e.rsport, e.rdport, e.state,
            e.unreplied, e.assured)


def test_netlink_reader_matches_conntrack_tools(topology: Topology) -> None:
    ns = topology.pod
    entries = _mixed_entries(700)  # several recv() chunks
    with CtSocket(ns) as ct:
        assert ct.insert_many(entries) == len(entries)
        decoded = ct.entries()
        scan = ct.dump()
        glob = ct.stats_global()
        cpus = ct.stats_cpu()
    text = ns.run(["conntrack", "-L", "-f", "ipv4"]).stdout + ns.run(["conntrack", "-L", "-f", "ipv6"]).stdout
    parsed = parse_lines(text.splitlines()).entries
    assert len(parsed) == len(entries) == glob["entries"] == scan.total
    assert sorted(map(_key, decoded)) == sorted(map(_key, parsed)) == sorted(map(_key, entries))
    assert scan.by_proto == {"tcp": 1404, "udp": 700}
    # the fast dump keeps exactly what the offline path keeps
    offline = TableScan.from_entries(parsed)
    assert sorted(map(_key, scan.nat)) == sorted(map(_key, offline.nat))
    assert {(e.src, e.dport) for e in scan.nat} == {("10.9.0.7", 9080), ("10.9.0.7", 8080),
                                                     ("fd00::7", 9080), ("fd00::7", 8080)}
    assert scan.nat_total == offline.nat_total == 704
    assert scan.capture_ports == {15006: 704}
    assert len(cpus) == len(ns.run(["conntrack", "-S"]).stdout.splitlines())
    assert {"found", "insert_failed", "drop", "early_drop"} <= set(cpus[0])


def test_reader_handles_zones_by_the_generic_path(topology: Topology) -> None:
    ns = topology.pod
    ns.run(["conntrack", "-I", "-p", "tcp", "-s", "10.9.9.1", "-d", "10.9.9.2", "--sport", "5", "--dport", "6",
            "--state", "ESTABLISHED", "-t", "100", "-w", "7", "-u", "SEEN_REPLY"])
    ns.run(["conntrack", "-I", "-p", "icmp", "-s", "10.9.9.1", "-d", "10.9.9.2", "-t", "29", "--icmp-type",
            "8", "--icmp-code", "0", "--icmp-id", "9"])
    with CtSocket(ns) as ct:
        scan = ct.dump(family=socket.AF_INET)
        ents = ct.entries()
    assert scan.total == 2 and scan.by_proto == {"icmp": 1, "tcp": 1}
    z = [e for e in ents if e.proto == 6][0]
    assert z.zone == 7 and z.state == "ESTABLISHED"


def test_insert_is_idempotent(topology: Topology) -> None:
    with CtSocket(topology.pod) as ct:
        e = CtEntry(4, 6, "10.9.9.1", "10.9.9.2", 1, 2, "10.9.9.2", "10.9.9.1", 2, 1, state="ESTABLISHED",
                    timeout=100)
        ct.insert_many([e])
        ct.insert_many([e])  # EEXIST is tolerated (idempotent fixtures)
        assert len(ct.entries()) == 1
