"""`meshnet doctor`: every check at once. Exit 0 healthy, 1 findings, 2 could not inspect.

One pod (--netns/--pid), every pod on the node (--all, the exit code is the worst), or a
support bundle offline (--bundle FILE: the same checks on what `meshnet collect` recorded).
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from meshnet.cli import options as o
from meshnet.cli.diff_cmd import expected_spec_options
from meshnet.cli.errors import diagnostic
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.diagnose.node import Row


def run_doctor(ns: Any) -> int:
    from meshnet.apply.netns import Netns, NetnsError
    from meshnet.cli.diff_cmd import expected_spec, resolve_netns, spec_given
    from meshnet.diagnose.doctor import CannotInspect, diagnose

    if ns.bundle is not None or ns.all:
        if ns.netns is not None or ns.pid is not None or spec_given(ns):
            raise UsageError("--all and --bundle take no --netns/--pid and no expected spec (the checks need none)")
        if ns.bundle is not None and ns.all:
            raise UsageError("give --all or --bundle, not both")
        return _bundle(ns) if ns.bundle is not None else _all(ns)
    try:
        netns = resolve_netns(ns)
        host = Netns.resolve(netns=ns.host_netns)
    except NetnsError as exc:
        raise CannotInspect(str(exc)) from None
    spec = expected_spec(ns, netns) if spec_given(ns) else None
    report = diagnose(netns, spec, host)
    _print_report(report.to_dict() if ns.json else report.lines(), ns.json)
    return report.exit_code


def _print_report(out: Any, as_json: bool) -> None:
    sys.stdout.write(json.dumps(out, indent=2) + "\n" if as_json else "\n".join(out) + "\n")


def _all(ns: Any) -> int:
    from meshnet.apply.netns import Netns
    from meshnet.cli.node_args import node_targets
    from meshnet.diagnose.node import doctor_all

    targets = node_targets(ns)
    host = Netns.resolve(netns=ns.host_netns)
    rows = doctor_all(targets, host, jobs=ns.jobs, timeout=ns.pod_timeout)
    return _print_rows(rows, ns.json, source="node")


def _print_rows(rows: list[Row], as_json: bool, source: str) -> int:
    from meshnet.diagnose.node import table, worst_exit

    code = worst_exit(rows)
    rows = sorted(rows, key=lambda r: (not r.target.pod.get("name"), r.target.name))
    if as_json:
        _print_report({"source": source, "exit": code, "pods": [r.to_dict() for r in rows]}, True)
    else:
        lines = table(rows) if rows else ["no pod network namespaces found"]
        counts = [sum(r.exit_code == c for r in rows) for c in (0, 1, 2)]
        lines.append(f"{len(rows)} namespace(s): {counts[0]} healthy, {counts[1]} with findings, "
                     f"{counts[2]} not inspected")
        _print_report(lines, False)
    return code


def _bundle(ns: Any) -> int:
    from meshnet.diagnose.bundle.archive import read_bundle
    from meshnet.diagnose.doctor import CannotInspect, diagnose
    from meshnet.diagnose.node import Row, Target, judge

    bundle = read_bundle(ns.bundle)
    rows: list[Row] = []
    for pod in bundle.select(ns.pod):
        target = Target(pod.source, (0, 0), pod.pod)  # type: ignore[arg-type]  # a Replay stands in for Netns
        try:
            report = diagnose(pod.source, None, pod.host, conntrack=pod.snapshot)
        except CannotInspect as exc:
            rows.append(Row(target, exc.exit_code, error=str(exc)))
            continue
        rows.append(Row(target, judge(target, report), report))
    if len(rows) == 1 and rows[0].report is not None:
        report = rows[0].report
        _print_report(report.to_dict() if ns.json else
                      [f"bundle {ns.bundle} (collected {bundle.node.get('created', '?')} on kernel "
                       f"{bundle.node.get('kernel', '?')})", *report.lines()], ns.json)
        return rows[0].exit_code
    return _print_rows(rows, ns.json, source=f"bundle {ns.bundle}")


@o.command("doctor")
@expected_spec_options
@o.host_netns
@click.option("--bundle", default=None, metavar="FILE", help="Diagnose a `meshnet collect` bundle offline.")
@click.option("--pod", default=None, metavar="LABEL", help="With --bundle: only this pod of the bundle.")
@o.node_options
@o.istio_flags
def doctor_cmd(**params: Any) -> None:
    """Diagnose a pod's interception: missing rules, wrong backend, drift, TPROXY routing, DNS zones,
    proxy listeners, conntrack. One pod (--netns/--pid, or the namespace meshnet runs in), every pod
    of the node (--all, the exit code is the worst) or a support bundle offline (--bundle FILE).
    Exit 0 healthy, 1 findings, 2 could not inspect.
    """
    click.get_current_context().exit(diagnostic(lambda: run_doctor(SimpleNamespace(**params)),
                                                prog="meshnet doctor"))
