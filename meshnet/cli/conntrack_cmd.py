"""`meshnet conntrack analyze|watch`: the five-tuple collision ("503 UF") analyzer.

Exit codes: 0 clean (or only info findings), 1 findings, 2 error (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from meshnet.cli import options as o


class CmdError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _fail(msg: str) -> None:
    from meshnet.errors import one_line

    click.echo(f"meshnet: error: {one_line(msg)}", err=True)
    sys.exit(2)


def _seconds(option: str, value: float, *, allow_zero: bool) -> float:
    """A finite, bounded number of seconds (click's float type lets nan, inf and 1e308 through)."""
    from meshnet.errors import SpecError
    from meshnet.spec.values import parse_seconds

    try:
        return parse_seconds(option, value, allow_zero=allow_zero)
    except SpecError as exc:
        raise CmdError(str(exc)) from None


def _resolve(netns: str | None, pid: int | None) -> Any:
    """--netns/--pid, or the namespace meshnet runs in (a debug container in the pod)."""
    from meshnet.cli.inspect_target import inspect_target
    from meshnet.errors import MeshnetError

    if netns is not None and pid is not None:
        raise CmdError("give --netns or --pid, not both")
    try:
        return inspect_target(netns, pid)
    except MeshnetError as e:  # NetnsError, CapabilityError: one line, exit 2
        raise CmdError(str(e)) from None


def _guard(fn: Any) -> int:
    """Turn every expected failure into one line; never a traceback."""
    from meshnet.apply.netns import NetnsError
    from meshnet.diagnose.conntrack.envoy import EnvoyLogError
    from meshnet.diagnose.conntrack.netlink import NetlinkError
    from meshnet.diagnose.conntrack.textparse import ParseError
    from meshnet.errors import MeshnetError

    try:
        return fn()
    except (CmdError, NetnsError, NetlinkError, ParseError, EnvoyLogError, MeshnetError) as e:
        _fail(str(e))
    except PermissionError as e:
        _fail(f"permission denied ({e.strerror or e}); run as root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    except OSError as e:
        _fail(f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else ""))
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as e:  # a bug: one line all the same, exit 2 (could not inspect)
        _fail(f"internal error: {type(e).__name__}: {e}")
    return 2


@click.group("conntrack")
def conntrack_group() -> None:
    """Conntrack five-tuple collision ("503 UF") analysis."""


@conntrack_group.command("analyze", cls=o.MeshnetCommand)
@o.target_options(o.READ_TARGET)
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False),
              help="Offline: a saved `conntrack -L [-o extended]` or /proc/net/nf_conntrack file.")
@click.option("--bundle", type=click.Path(dir_okay=False),
              help="Offline: a `meshnet collect` support bundle (the conntrack state it recorded).")
@click.option("--pod", "pod", help="With --bundle of several namespaces: the one to analyze (label or pod name).")
@click.option("--envoy-log", type=click.Path(dir_okay=False), help="Envoy access log (Istio text or JSON).")
@click.option("--kernel", "kernel", help="Kernel release of the node, for --from-file (e.g. 6.1.0-56-amd64).")
@click.option("--interval", type=float, default=0.0, show_default=True,
              help="Sample counters twice this many seconds apart, to see them rise.")
@o.flag("--json", "as_json", help="Machine-readable output (JSON).")
def analyze_cmd(netns: str | None, pid: int | None, from_file: str | None, bundle: str | None, pod: str | None,
                envoy_log: str | None, kernel: str | None, interval: float, as_json: bool) -> None:
    """Find, explain and predict duplicate five-tuple collisions in a pod namespace."""

    def run() -> int:
        from meshnet.diagnose.conntrack.findings import analyze, exit_code

        _seconds("--interval", interval, allow_zero=True)
        if bundle is not None:
            if netns is not None or pid is not None or from_file is not None:
                raise CmdError("--bundle cannot be combined with --netns/--pid/--from-file")
            snap = _bundle_snapshot(bundle, pod)
        elif from_file is not None:
            if netns is not None or pid is not None:
                raise CmdError("--from-file cannot be combined with --netns/--pid")
            from meshnet.diagnose.conntrack.snapshot import collect_file

            try:
                snap = collect_file(from_file, kernel)
            except FileNotFoundError:
                raise CmdError(f"{from_file}: no such file") from None
        else:
            ns = _resolve(netns, pid)
            from meshnet.diagnose.conntrack.snapshot import collect_live

            snap = collect_live(ns, interval)
        if envoy_log is not None:
            from meshnet.diagnose.conntrack.envoy import read_log

            try:
                snap.envoy = read_log(envoy_log)
            except FileNotFoundError:
                raise CmdError(f"{envoy_log}: no such file") from None
        findings = analyze(snap)
        if as_json:
            click.echo(json.dumps({"findings": [f.to_json() for f in findings], "stats": stats_json(snap)},
                                  indent=2))
        else:
            _print_text(snap, findings)
        return exit_code(findings)

    sys.exit(_guard(run))


def _bundle_snapshot(path: str, pod: str | None) -> Any:
    from meshnet.diagnose.bundle.archive import BundleError, read_bundle

    try:
        pods = read_bundle(path).select(pod)
        if len(pods) != 1:
            raise CmdError(f"{path} holds {len(pods)} namespaces: choose one with --pod "
                           f"({', '.join(p.label for p in pods)})")
        return pods[0].snapshot()
    except BundleError as e:
        raise CmdError(str(e)) from None


def stats_json(snap: Any) -> dict[str, Any]:
    from meshnet.diagnose.conntrack.kernel import WATCHED_COUNTERS

    cpu_keys = ("found", "insert", "insert_failed", "drop", "early_drop", "invalid", "error",
                "search_restart", "clash_resolve", "chain_toolong")
    out: dict[str, Any] = {
        "source": snap.source,
        "entries": snap.count if snap.count is not None else snap.scan.total,
        "entries_read": snap.scan.total,
        "max": snap.max,
        "nat_entries": snap.scan.nat_total,
        "by_proto": snap.scan.by_proto,
        "capture_ports": {str(k): v for k, v in sorted(snap.scan.capture_ports.items())},
        "conntrack": {k: snap.stat_total(k) for k in cpu_keys} if snap.stats_cpu else None,
        "conntrack_per_cpu": snap.stats_cpu or None,
        "tcp": {k: snap.counters[k] for k in WATCHED_COUNTERS if k in snap.counters} or None,
        "kernel": snap.kernel,
        "tcp_early_demux": snap.early_demux,
        "notes": snap.notes,
    }
    if snap.stats_cpu_before is not None:
        out["conntrack_delta"] = {k: snap.stat_delta(k) for k in cpu_keys}
    if snap.counters_before is not None:
        out["tcp_delta"] = {k: snap.counter_delta(k) for k in WATCHED_COUNTERS if k in snap.counters}
    if snap.rules is not None:
        seen: list[dict[str, Any]] = []
        for c in snap.rules.captures:
            j = c.to_json()
            if j not in seen:
                seen.append(j)
        out["captures"] = seen
        out["snat_rules"] = snap.rules.snat
    return out


def _print_text(snap: Any, findings: list[Any]) -> None:
    st = stats_json(snap)
    head = f"{snap.source}: {st['entries']} entries ({st['nat_entries']} with NAT)"
    if st["max"]:
        head += f", max {st['max']}"
    if snap.kernel:
        head += f", kernel {snap.kernel}"
    if snap.early_demux is not None:
        head += f", tcp_early_demux={snap.early_demux}"
    click.echo(head)
    if st["conntrack"]:
        c = st["conntrack"]
        click.echo("conntrack: " + " ".join(f"{k}={c[k]}" for k in ("found", "insert_failed", "drop",
                                                                      "early_drop")))
    for n in snap.notes:
        click.echo(f"note: {n}")
    if not findings:
        click.echo("no findings")
    for f in findings:
        click.echo(f"\n[{f.severity}] {f.kind}: {f.summary}")
        for ev in f.evidence:
            click.echo(f"    {ev['type']}: {ev['text']}")
        for a in f.actions:
            click.echo(f"    do: {a}")


@conntrack_group.command("watch", cls=o.MeshnetCommand)
@o.target_options(o.READ_TARGET)
@click.option("--duration", type=float, default=60.0, show_default=True, help="Stop after this many seconds.")
@click.option("--hang-after", type=float, default=2.0, show_default=True,
              help="Report a colliding SYN_SENT entry as a hang when still unreplied after this many seconds.")
@o.flag("--json", "as_json", help="One JSON object per line.")
def watch_cmd(netns: str | None, pid: int | None, duration: float, hang_after: float, as_json: bool) -> None:
    """Follow conntrack events and report collisions as they happen (Ctrl-C to stop)."""

    def run() -> int:
        _seconds("--duration", duration, allow_zero=False)
        _seconds("--hang-after", hang_after, allow_zero=True)
        ns = _resolve(netns, pid)
        from meshnet.diagnose.conntrack.watch import watch

        def emit(ev: dict[str, Any]) -> None:
            if as_json:
                click.echo(json.dumps(ev))
            else:
                click.echo(f"{ev['time']} [{ev['severity']}] {ev['kind']}: {ev['summary']}")
            sys.stdout.flush()

        try:
            n = watch(ns, duration, emit, hang_after=hang_after)
        except KeyboardInterrupt:
            return 0
        return 1 if n else 0

    sys.exit(_guard(run))


if __name__ == "__main__":
    conntrack_group()
