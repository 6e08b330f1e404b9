"""Render benchmark: how long building and rendering the default Istio rules takes (no target).

Prints a table: flags -> Spec, Spec -> iptables plan -> restore text, Spec -> nft text, and the
same for an IPv6 + DNS + TPROXY spec. Median of many in-process runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshnet.plan.istio_builder import build_iptables  # noqa: E402
from meshnet.plan.nft_builder import build_nft  # noqa: E402
from meshnet.plan.render_nft import render_nft  # noqa: E402
from meshnet.plan.render_restore import render_family, render_transcript  # noqa: E402
from meshnet.spec.flags import parse_istio_args  # noqa: E402

INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]
RUNS = 2000


def median_us(fn: Callable[[], object], runs: int = RUNS) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    spec, _ = parse_istio_args(INJECTOR, env={})
    big, _ = parse_istio_args([*INJECTOR[:7], "TPROXY", *INJECTOR[8:], "--redirect-dns", "--capture-all-dns",
                               "-o", "15020,9000", "-c", "eth9"], env={}, enable_ipv6=True)
    rows = [
        ("parse injector flags -> Spec", median_us(lambda: parse_istio_args(INJECTOR, env={}))),
        ("default: build + restore text (v4)", median_us(lambda: render_family(build_iptables(spec), 4))),
        ("default: build + nft transaction", median_us(lambda: render_nft(build_nft(spec)))),
        ("tproxy+dns+ipv6: build + transcript", median_us(lambda: render_transcript(build_iptables(big)))),
        ("tproxy+dns+ipv6: build + nft", median_us(lambda: render_nft(build_nft(big)))),
    ]
    print(f"render benchmark (median of {RUNS} runs, Python {sys.version.split()[0]})")
    print(f"{'step':<40} {'median':>10}")
    for name, us in rows:
        print(f"{name:<40} {us:>8.1f} us")


if __name__ == "__main__":
    main()
