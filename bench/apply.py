"""Whole-process cost of `meshnet istio-iptables` (istio-init's job) against the floor, plus 32 at once.

The floor is what any istio-init must pay, measured in the same run: start the same Python
interpreter (`python -c pass`) and run one `nsenter --net=NS iptables-restore --noflush` with the
exact restore text meshnet renders for the injector's default flags. Every run goes into a fresh
namespace (created and deleted outside the timed region), with meshnet's bytecode compiled first
as in an installed package. Target: meshnet <= 1.3x the floor.

    python bench/apply.py [--runs 25] [--concurrent 32]

Needs root. Every namespace it creates is `mn-bench-<random>-*` and is deleted at the end, even on
error or Ctrl-C. If the target is missed it prints the imports that dominate (`-X importtime`).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
MESHNET = str(VENV_BIN / "meshnet")
INJECTOR_FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                  "-b", "*", "-d", "15090,15021,15020"]  # fmt: skip
TARGET = 1.3
# An IPv4-only pod address (on lo: no veth needed): Istio's IPv6 detection then says IPv4 only,
# so meshnet does exactly one restore, like the floor.
POD_ADDR = "10.99.0.2/32"


class Namespaces:
    """Fresh `mn-bench-*` namespaces; close() deletes every one of them."""

    def __init__(self) -> None:
        self.prefix = f"mn-bench-{secrets.token_hex(4)}"
        self.names: list[str] = []

    def new(self) -> str:
        name = f"{self.prefix}-{len(self.names)}"
        self.names.append(name)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", POD_ADDR, "dev", "lo")
        return name

    def close(self) -> list[str]:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        left = [n for n in self.names if os.path.exists(f"/run/netns/{n}")]
        self.names = left
        return left


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def payload() -> str:
    """The IPv4 restore text meshnet applies for the injector flags (same renderer, same spec)."""
    from meshnet.plan.istio_builder import build_iptables
    from meshnet.plan.render_restore import render_family
    from meshnet.spec.flags import parse_istio_args

    spec, _ = parse_istio_args(INJECTOR_FLAGS, env={}, enable_ipv6=False)
    return render_family(build_iptables(spec), 4)


def meshnet_argv(ns: str) -> list[str]:
    return [MESHNET, "istio-iptables", *INJECTOR_FLAGS, "--network-namespace", f"/run/netns/{ns}"]


def timed(argv: Sequence[str], stdin: str | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    cp = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=120)
    return (time.perf_counter() - t0) * 1000, cp


def check(cp: subprocess.CompletedProcess[str], what: str) -> None:
    if cp.returncode != 0:
        raise SystemExit(f"bench: {what} failed (exit {cp.returncode}): {cp.stderr.strip()[-500:]}")


def has_rules(ns: str) -> bool:
    """Did the apply really land? (a fast exit that programs nothing must not look good)."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "iptables-save"], capture_output=True, text=True)
    if "-A ISTIO_OUTPUT" in out.stdout:
        return True
    nft = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "nft", "list", "ruleset"], capture_output=True,
                         text=True)  # fmt: skip
    return "istio-output" in nft.stdout


def serial(nss: Namespaces, runs: int, text: str) -> dict[str, list[float]]:
    """Interleaved rounds, so drift in machine load hits floor and meshnet alike."""
    times: dict[str, list[float]] = {"python": [], "restore": [], "meshnet": []}
    for _ in range(runs):
        ms, cp = timed([sys.executable, "-c", "pass"])
        check(cp, "python -c pass")
        times["python"].append(ms)
        ns = nss.new()
        ms, cp = timed(["nsenter", f"--net=/run/netns/{ns}", "iptables-restore", "--noflush"], text)
        check(cp, "iptables-restore")
        times["restore"].append(ms)
        ns = nss.new()
        ms, cp = timed(meshnet_argv(ns))
        check(cp, "meshnet istio-iptables")
        if not has_rules(ns):
            raise SystemExit(f"bench: meshnet exited 0 but no Istio rules are in {ns}")
        times["meshnet"].append(ms)
    return times


def compile_bytecode() -> None:
    """Write meshnet's .pyc files first: an installed package ships them, and with
    PYTHONDONTWRITEBYTECODE set (as in this CI) every run would otherwise recompile every module."""
    import meshnet

    cp = subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(meshnet.__file__).parent)],
                        capture_output=True, text=True)  # fmt: skip
    check(cp, "compileall")


def cpu_ms() -> float:
    """CPU time of every child process reaped so far (and of their reaped children)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1000


def concurrent(nss: Namespaces, n: int) -> tuple[float, float, list[float], list[str]]:
    """n processes started at once by n threads; returns wall ms, CPU ms, per-process ms, failures."""
    names = [nss.new() for _ in range(n)]
    barrier = threading.Barrier(n)
    per: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one(ns: str) -> None:
        barrier.wait()
        ms, cp = timed(meshnet_argv(ns))
        with lock:
            per.append(ms)
            if cp.returncode != 0:
                failures.append(f"{ns}: exit {cp.returncode}: {cp.stderr.strip()[-300:]}")

    threads = [threading.Thread(target=one, args=(ns,)) for ns in names]
    cpu0 = cpu_ms()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = (time.perf_counter() - t0) * 1000
    cpu = cpu_ms() - cpu0
    failures += [f"{ns}: exit 0 but no Istio rules" for ns in names if not has_rules(ns)]
    return wall, cpu, per, failures


def import_profile(nss: Namespaces, top: int = 12) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """One real run under `python -X importtime`: (top-level imports by cumulative us,
    any module by self us), the heaviest first."""
    ns = nss.new()
    cp = subprocess.run([sys.executable, "-X", "importtime", *meshnet_argv(ns)], capture_output=True, text=True)
    cumulative: list[tuple[int, str]] = []
    own: list[tuple[int, str]] = []
    for line in cp.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        own.append((int(parts[0]), name.strip()))
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one leading space
            cumulative.append((int(parts[1]), name.strip()))
    return sorted(cumulative, reverse=True)[:top], sorted(own, reverse=True)[:top]


def row(label: str, values: list[float] | float, fmt: Callable[[float], str] = "{:8.1f}".format) -> str:
    if isinstance(values, float):
        return f"  {label:<62}{fmt(values)}"
    return f"  {label:<62}{fmt(statistics.median(values))}{fmt(min(values))}{fmt(max(values))}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="serial runs (>= 20 for the issue's median)")
    ap.add_argument("--concurrent", type=int, default=32, help="parallel applies into as many namespaces")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/apply.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    compile_bytecode()
    text = payload()
    variant = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True).stdout.strip()
    nss = Namespaces()
    try:
        times = serial(nss, args.runs, text)
        floor = [p + r for p, r in zip(times["python"], times["restore"], strict=True)]
        ratio = statistics.median(times["meshnet"]) / (
            statistics.median(times["python"]) + statistics.median(times["restore"])
        )
        print(f"\nmeshnet istio-iptables, injector default flags, fresh namespace per run "
              f"({args.runs} runs, ms; {len(text.splitlines())}-line payload, {variant})")  # fmt: skip
        print(f"  {'':<62}{'median':>8}{'min':>8}{'max':>8}")
        print(row(f"floor: {Path(sys.executable).name} -c pass", times["python"]))
        print(row("floor: nsenter --net=NS iptables-restore --noflush < payload", times["restore"]))
        print(row("floor total (per-round sum)", floor))
        print(row("meshnet istio-iptables --network-namespace NS", times["meshnet"]))
        verdict = "OK" if ratio <= TARGET else "MISSED"
        print(row(f"ratio meshnet / floor medians (target <= {TARGET}x)", ratio, "{:7.2f}x".format) + f"  {verdict}")

        wall, cpu, per, failures = concurrent(nss, args.concurrent)
        print(f"\n{args.concurrent} concurrent applies into {args.concurrent} fresh namespaces (threads launching "
              f"the processes)")  # fmt: skip
        print(row("wall time, all done (ms)", wall))
        print(row(f"CPU time of all processes (ms; {os.cpu_count()} CPUs here)", cpu))
        print(row("per-process time (ms): median / min / max", per))
        print(row("failures (non-zero exit or no rules)", float(len(failures)), "{:8.0f}".format))
        for f in failures:
            print(f"    {f}")

        if ratio > TARGET:
            cumulative, own = import_profile(nss)
            print("\nTarget missed. Imports of one run (python -X importtime), top level by cumulative time:")
            for us, name in cumulative:
                print(f"  {us / 1000:8.1f} ms  {name}")
            print("and any module by its own time:")
            for us, name in own:
                print(f"  {us / 1000:8.1f} ms  {name}")
        return 1 if failures else 0
    finally:
        left = nss.close()
        if left:
            print(f"bench: could not delete namespaces: {', '.join(left)}", file=sys.stderr)
        else:
            print(f"\ncleaned up {nss.prefix}-* namespaces")


if __name__ == "__main__":
    sys.exit(main())
