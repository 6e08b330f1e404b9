"""Everything the findings engine looks at, gathered live from a namespace or from offline files."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

from meshnet.lite.records import dataclass, field

from .kernel import kernel_release, read_counters, sysctl_int
from .netlink import TableScan
from .rules import RulesInfo, analyze_iptables, analyze_nft

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

    from .envoy import AccessLine
    from .sockets import TcpSock

_IPT_TABLES = {"ip filter", "ip nat", "ip mangle", "ip raw", "ip security", "ip6 filter", "ip6 nat",
               "ip6 mangle", "ip6 raw", "ip6 security"}


@dataclass
class Snapshot:
    source: str
    scan: TableScan
    stats_cpu: list[dict[str, int]] = field(default_factory=list)
    stats_cpu_before: list[dict[str, int]] | None = None  # with --interval: counters at the start
    count: int | None = None
    max: int | None = None
    counters: dict[str, int] = field(default_factory=dict)
    counters_before: dict[str, int] | None = None
    rules: RulesInfo | None = None
    sockets: list[TcpSock] | None = None
    kernel: str | None = None
    early_demux: int | None = None
    envoy: list[AccessLine] | None = None
    notes: list[str] = field(default_factory=list)

    def stat_total(self, name: str, before: bool = False) -> int:
        rows = self.stats_cpu_before if before else self.stats_cpu
        return sum(r.get(name, 0) for r in rows or [])

    def stat_delta(self, name: str) -> int | None:
        if self.stats_cpu_before is None:
            return None
        return self.stat_total(name) - self.stat_total(name, before=True)

    def counter_delta(self, name: str) -> int | None:
        if self.counters_before is None or name not in self.counters:
            return None
        return self.counters[name] - self.counters_before.get(name, 0)


def read_rules(ns: Netns) -> RulesInfo:
    """iptables rules of both backends and native nft tables, read-only (nothing is instantiated)."""
    info = RulesInfo()
    for fam, pfx in (("4", "iptables"), ("6", "ip6tables")):
        cp = _run(ns, [f"{pfx}-nft-save"])
        if cp and cp.stdout.strip():
            info.merge(analyze_iptables(cp.stdout, f"{pfx}-nft"))
        # iptables-legacy-save would create empty legacy tables: only run it if some exist.
        names = f"ip{'6' if fam == '6' else ''}_tables_names"
        try:
            legacy = ns.read_proc_net(names).split()
        except (FileNotFoundError, OSError):
            legacy = []
        if legacy:
            cp = _run(ns, [f"{pfx}-legacy-save"])
            if cp and cp.stdout.strip():
                info.merge(analyze_iptables(cp.stdout, f"{pfx}-legacy"))
    cp = _run(ns, ["nft", "list", "ruleset"])
    if cp and cp.stdout.strip():
        info.merge(analyze_nft(cp.stdout, skip_tables=_IPT_TABLES))
    return info


def _run(ns: Netns, argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        cp = subprocess.run(ns.argv(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cp if cp.returncode == 0 else None


def collect_live(ns: Netns, interval: float = 0.0) -> Snapshot:
    """Read conntrack, counters, rules, sockets and sysctls of a namespace (read-only)."""
    from .netlink import CtSocket
    from .sockets import list_tcp

    with CtSocket(ns) as ct:
        before_stats = before_counters = None
        if interval > 0:
            before_stats = ct.stats_cpu()
            before_counters = read_counters(ns)
            time.sleep(interval)
        scan = ct.dump()
        snap = Snapshot(source=f"netns {ns.label}", scan=scan, stats_cpu=ct.stats_cpu(),
                        stats_cpu_before=before_stats)
        glob = ct.stats_global()
    snap.count, snap.max = glob.get("entries"), glob.get("max")
    snap.counters = read_counters(ns)
    snap.counters_before = before_counters
    snap.rules = read_rules(ns)
    snap.sockets = list_tcp(ns)
    snap.kernel = kernel_release()
    snap.early_demux = sysctl_int(ns, "net.ipv4.tcp_early_demux")
    if scan.interrupted:
        snap.notes.append("the table changed during the dump (NLM_F_DUMP_INTR); entries may be missing")
    return snap


def collect_file(path: str, kernel: str | None = None) -> Snapshot:
    from .textparse import read_file

    data = read_file(path)
    scan = TableScan.from_entries(data.entries)
    snap = Snapshot(source=f"file {path}", scan=scan, stats_cpu=data.stats_cpu, count=data.count,
                    kernel=kernel)
    if data.skipped:
        snap.notes.append(f"{data.skipped} lines in {path} were not conntrack entries and were ignored")
    snap.notes.append("offline input: no rules, sockets or TCP counters; kernel version "
                      + (kernel or "unknown"))
    return snap
