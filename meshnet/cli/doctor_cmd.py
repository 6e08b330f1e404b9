"""`meshnet doctor`: every check at once. Exit 0 healthy, 1 findings, 2 could not inspect."""

from __future__ import annotations

import json
import sys

import click

from meshnet.cli.diff_cmd import PASS_THROUGH
from meshnet.cli.errors import guarded


def run_doctor(argv: list[str]) -> int:
    from meshnet.cli.diff_cmd import expected_spec, make_parser, parse, resolve_netns, spec_given
    from meshnet.doctor import CannotInspect, diagnose
    from meshnet.netns import Netns, NetnsError

    parser = make_parser("meshnet doctor")
    parser.add_argument("--host-netns", default=None, metavar="NAME|PATH",
                        help="namespace whose iptables backend counts as the host's (default: the current one)")
    ns = parse(parser, argv)
    try:
        netns = resolve_netns(ns)
        host = Netns.resolve(netns=ns.host_netns)
    except NetnsError as exc:
        raise CannotInspect(str(exc)) from None
    spec = expected_spec(ns, netns) if spec_given(ns) else None
    report = diagnose(netns, spec, host)
    if ns.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(report.lines()) + "\n")
    return report.exit_code


@click.command("doctor", context_settings=PASS_THROUGH, add_help_option=False)
@click.pass_context
def doctor_cmd(ctx: click.Context) -> None:
    """Diagnose a pod's interception: missing rules, wrong backend, drift, TPROXY routing, DNS zones,
    proxy listeners, conntrack. meshnet doctor --netns NAME|--pid PID [ISTIO FLAGS | -f SPEC.yaml] [--json]
    """
    ctx.exit(guarded(lambda: run_doctor(list(ctx.args)), prog="meshnet doctor"))
