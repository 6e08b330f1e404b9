"""Live collision detection from conntrack events (NEW/UPDATE/DESTROY) plus the drop counters."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .entry import CtEntry, GroupKey
from .netlink import NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, CtSocket

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

_GROUPS = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1)) | (
    1 << (NFNLGRP_CONNTRACK_DESTROY - 1))


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def watch(ns: Netns, duration: float, emit: Callable[[dict[str, Any]], None], hang_after: float = 2.0) -> int:
    """Report collisions for `duration` seconds; returns how many reports were emitted."""
    events = CtSocket(ns, groups=_GROUPS)  # subscribe first, then seed: no gap
    stats = CtSocket(ns)
    try:
        groups: dict[GroupKey, dict[int, CtEntry]] = {}
        for seed in stats.dump(keep_all_nat=True).nat:
            if seed.dst_rewritten:
                groups.setdefault(seed.group_key, {})[seed.dport] = seed
        base = _drops(stats)
        reported: set[tuple[GroupKey, int]] = set()  # (group, original dport): one connection
        pending: dict[tuple[GroupKey, int], tuple[float, CtEntry]] = {}
        count = 0
        deadline = time.monotonic() + duration
        next_stat = time.monotonic() + 1.0

        def report(kind: str, severity: str, summary: str, entries: list[CtEntry], **extra: Any) -> None:
            nonlocal count
            count += 1
            emit({"time": datetime.now().isoformat(timespec="milliseconds"), "kind": kind,
                  "severity": severity, "summary": summary, "evidence": [e.line() for e in entries], **extra})

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for kind, e in events.events(min(left, 0.25)):
                if e is None:  # "overrun"
                    report("watch-overrun", "warning", "event buffer overrun: some events were lost", [])
                    continue
                if not e.dst_rewritten:
                    continue
                g = groups.setdefault(e.group_key, {})
                if kind == "destroy":
                    g.pop(e.dport, None)
                    pending.pop((e.group_key, e.dport), None)
                    continue
                g[e.dport] = e
                rid = (e.group_key, e.dport)
                if e.src_rewritten and len(g) > 1 and rid not in reported:
                    reported.add(rid)
                    others = [x for p, x in g.items() if p != e.dport]
                    report("tuple-collision", "warning",
                           f"client {_addr(e.src, e.sport)} -> {e.dst}:{e.dport} collides with "
                           f"{','.join(str(x.dport) for x in others)} on {_addr(e.rsrc, e.rsport)}; the kernel "
                           f"rewrote its source port to {e.rdport}", [*others, e],
                           client=_addr(e.src, e.sport), dport=e.dport, new_sport=e.rdport)
                    if e.unreplied:
                        pending[rid] = (time.monotonic() + hang_after, e)
                elif rid in pending and not e.unreplied:
                    pending.pop(rid)
            now = time.monotonic()
            for rid, (due, e) in list(pending.items()):
                if now >= due:
                    pending.pop(rid)
                    sib = [x for p, x in groups.get(e.group_key, {}).items() if p != e.dport]
                    report("collision-hang", "critical",
                           f"{_addr(e.src, e.sport)} -> {e.dst}:{e.dport} still SYN_SENT [UNREPLIED] after "
                           f"{hang_after:g}s next to an established sibling: the 503 UF hang", [*sib, e],
                           client=_addr(e.src, e.sport), dport=e.dport)
            if now >= next_stat:
                next_stat = now + 1.0
                cur = _drops(stats)
                rise = {k: cur[k] - base[k] for k in cur if cur[k] > base[k]}
                if rise:
                    base = cur
                    report("collision-race-drops", "warning",
                           "conntrack " + ", ".join(f"{k} +{v}" for k, v in rise.items())
                           + ": SYNs lost at confirm time (a simultaneous-SYN collision costs ~1 s)", [],
                           counters=rise)
        return count
    finally:
        events.close()
        stats.close()


def _drops(ct: CtSocket) -> dict[str, int]:
    rows = ct.stats_cpu()
    return {k: sum(r.get(k, 0) for r in rows) for k in ("insert_failed", "drop")}
