"""A conntrack Snapshot as plain JSON and back, for support bundles.

JSON, not pickle: a bundle travels from a user to a maintainer, and loading it must not run code.
The round trip is exact for everything the findings engine reads.
"""

from __future__ import annotations

from typing import Any

from .entry import CtEntry
from .netlink import TableScan
from .rules import Capture, RulesInfo
from .snapshot import Snapshot
from .sockets import TcpSock

FORMAT = 1
_ENTRY_FIELDS = ("family", "proto", "src", "dst", "sport", "dport", "rsrc", "rdst", "rsport", "rdport", "state",
                 "unreplied", "assured", "timeout", "mark", "zone", "id", "status", "start_ns", "extra")
_SOCK_FIELDS = ("family", "state", "local", "lport", "peer", "pport", "transparent", "uid", "retrans")


def _ports(value: frozenset[int] | None) -> list[int] | None:
    return None if value is None else sorted(value)


def dump(snap: Snapshot) -> dict[str, Any]:
    scan = snap.scan
    rules = None
    if snap.rules is not None:
        rules = {"snat": snap.rules.snat, "sources": snap.rules.sources,
                 "captures": [{"kind": c.kind, "direction": c.direction, "to_port": c.to_port,
                               "dports": _ports(c.dports), "excluded": sorted(c.excluded), "rule": c.rule,
                               "backend": c.backend} for c in snap.rules.captures]}
    return {
        "format": FORMAT, "source": snap.source,
        "scan": {"total": scan.total, "by_proto": scan.by_proto, "nat_total": scan.nat_total,
                 "capture_ports": {str(k): v for k, v in scan.capture_ports.items()},
                 "nat": [{f: getattr(e, f) for f in _ENTRY_FIELDS} for e in scan.nat],
                 "interrupted": scan.interrupted},
        "stats_cpu": snap.stats_cpu, "stats_cpu_before": snap.stats_cpu_before, "count": snap.count,
        "max": snap.max, "counters": snap.counters, "counters_before": snap.counters_before, "rules": rules,
        "sockets": None if snap.sockets is None else [{f: getattr(s, f) for f in _SOCK_FIELDS} for s in snap.sockets],
        "kernel": snap.kernel, "early_demux": snap.early_demux, "notes": snap.notes,
    }


def load(data: dict[str, Any]) -> Snapshot:
    if data.get("format") != FORMAT:
        raise ValueError(f"unsupported conntrack snapshot format {data.get('format')!r}")
    s = data["scan"]
    scan = TableScan(total=int(s["total"]), by_proto=dict(s["by_proto"]), nat_total=int(s["nat_total"]),
                     capture_ports={int(k): int(v) for k, v in s["capture_ports"].items()},
                     nat=[CtEntry(**{f: e.get(f) for f in _ENTRY_FIELDS}) for e in s["nat"]],
                     interrupted=bool(s["interrupted"]))
    rules = None
    if data.get("rules") is not None:
        r = data["rules"]
        rules = RulesInfo(captures=[Capture(c["kind"], c["direction"], c["to_port"],
                                            None if c["dports"] is None else frozenset(c["dports"]),
                                            frozenset(c["excluded"]), c["rule"], c["backend"]) for c in r["captures"]],
                          snat=list(r["snat"]), sources=list(r["sources"]))
    sockets = None if data.get("sockets") is None else [TcpSock(**s) for s in data["sockets"]]
    return Snapshot(source=str(data["source"]), scan=scan, stats_cpu=data["stats_cpu"],
                    stats_cpu_before=data["stats_cpu_before"], count=data["count"], max=data["max"],
                    counters=data["counters"],
                    counters_before=data["counters_before"], rules=rules, sockets=sockets, kernel=data["kernel"],
                    early_demux=data["early_demux"], notes=list(data["notes"]))
