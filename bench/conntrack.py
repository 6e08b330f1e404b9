"""Benchmark: `meshnet conntrack analyze --netns` vs `conntrack -L > /dev/null` on a 200 000-entry table.

Fills a throwaway mn- namespace's conntrack table over netlink (20% of the entries redirected to
:15006 like Istio's inbound capture, a few real collisions among them), then times both commands on
the same table in the same run (best of N), and reports the ratio and the analyzer's peak RSS.
Target: <= 1.5x conntrack -L and < 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshnet.apply.netns import Netns  # noqa: E402
from meshnet.diagnose.conntrack.entry import CtEntry  # noqa: E402
from meshnet.diagnose.conntrack.netlink import CtSocket  # noqa: E402


def entries(n: int) -> Iterator[CtEntry]:
    for i in range(n):
        client = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}"
        sp = 1024 + i % 60000
        if i % 5 == 0:  # inbound capture: original :8080/:9080, reply from :15006
            dport = 8080 if i % 2 else 9080
            yield CtEntry(4, 6, client, "10.200.0.2", sp, dport, "10.200.0.2", client, 15006, sp,
                          state="ESTABLISHED", assured=True, timeout=3600)
        else:
            yield CtEntry(4, 6, client, "10.200.0.2", sp, 9090, "10.200.0.2", client, 9090, sp,
                          state="ESTABLISHED", assured=True, timeout=3600)
    for k in range(10):  # ten real-looking collisions: same client port, two ports, one rewritten
        c = f"10.250.0.{k + 1}"
        yield CtEntry(4, 6, c, "10.200.0.2", 40000, 9080, "10.200.0.2", c, 15006, 40000, state="ESTABLISHED",
                      assured=True, timeout=3600)
        yield CtEntry(4, 6, c, "10.200.0.2", 40000, 8080, "10.200.0.2", c, 15006, 20000 + k,
                      state="ESTABLISHED", assured=True, timeout=3600)


def timed(argv: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS of the child in MB)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, p.returncode, ru.ru_maxrss // 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/conntrack.py: skipped: needs root (network namespaces, conntrack inserts)")
        return 0
    name = f"mn-bench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = Netns.resolve(name)
        t = time.perf_counter()
        with CtSocket(ns) as ct:
            ct.insert_many(entries(args.entries))
            count = ct.stats_global().get("entries", 0)
        fill = time.perf_counter() - t
        ours = [sys.executable, "-m", "meshnet.cli.conntrack_cmd", "analyze", "--netns", name]
        theirs = ["nsenter", f"--net=/run/netns/{name}", "conntrack", "-L"]
        rows: dict[str, list[float]] = {"meshnet conntrack analyze --netns": [], "conntrack -L > /dev/null": []}
        rss = 0
        rc = None
        for _ in range(args.repeat):  # interleaved, so load changes hit both alike
            s, rc, mb = timed(ours)
            rows["meshnet conntrack analyze --netns"].append(s)
            rss = max(rss, mb)
            s, _, mb2 = timed(theirs)
            rows["conntrack -L > /dev/null"].append(s)
        best = {k: min(v) for k, v in rows.items()}
        ratio = best["meshnet conntrack analyze --netns"] / best["conntrack -L > /dev/null"]
        out = {"entries": count, "fill_seconds": round(fill, 2), "analyze_exit": rc,
               "best_seconds": {k: round(v, 3) for k, v in best.items()},
               "all_seconds": {k: [round(x, 3) for x in v] for k, v in rows.items()},
               "ratio": round(ratio, 2), "analyze_peak_rss_mb": rss, "conntrack_peak_rss_mb": mb2,
               "target": "ratio <= 1.5 and rss < 200 MB",
               "ok": ratio <= 1.5 and rss < 200}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"conntrack table: {count} entries (filled over netlink in {fill:.1f} s), "
                  f"best of {args.repeat}, kernel {os.uname().release}")
            print(f"{'command':40} {'best s':>8} {'runs':>24} {'peak MB':>8}")
            for k, v in rows.items():
                mb = rss if k.startswith("meshnet") else mb2
                print(f"{k:40} {best[k]:8.3f} {' '.join(f'{x:.2f}' for x in v):>24} {mb:8d}")
            print(f"ratio {ratio:.2f}x (target <= 1.5x), analyzer peak RSS {rss} MB (target < 200 MB): "
                  f"{'OK' if out['ok'] else 'MISSED'}; analyze exit code {rc} (1 = the planted collisions)")
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    sys.exit(main())
