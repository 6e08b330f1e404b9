"""`meshnet validate`: Istio's istio-validation check against a namespace (exit 126 on failure)."""

from __future__ import annotations

import argparse
import sys

import click

from meshnet.cli.errors import guarded

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _parser() -> argparse.ArgumentParser:
    from meshnet.cli.apply_cmd import add_target_args
    from meshnet.spec.flags import new_parser

    parser = new_parser("meshnet validate")
    add_target_args(parser)
    parser.add_argument("--probe-port", "--iptables-probe-port", default="15002", help="port dialled on 127.0.0.6")
    parser.add_argument("--timeout", "--probe-timeout", default="5s", help="e.g. 5s, 500ms")
    parser.add_argument("--uid", default="1337", help="proxy uid the probe client runs as")
    parser.add_argument("--ipv6", action="store_true", help="probe over ::1/::6 (default: Istio's host-IP rule)")
    return parser


def run(argv: list[str]) -> int:
    from meshnet.apply.validation_probe import validate
    from meshnet.cli.apply_cmd import resolve_target
    from meshnet.spec import values as v
    from meshnet.spec.flags import parse_duration
    from meshnet.state.addresses import ipv6_enabled

    ns = _parser().parse_args(argv)
    netns = resolve_target(ns)
    port = v.parse_port("--probe-port", ns.probe_port)
    timeout = parse_duration("--timeout", ns.timeout)
    uid = v.parse_int("--uid", ns.uid, 0, 0xFFFFFFFE)
    ipv6 = ns.ipv6 or ipv6_enabled(netns, dual_stack=False)
    sys.stdout.write(validate(netns, probe_port=port, timeout=timeout, ipv6=ipv6, uid=uid, gid=uid) + "\n")
    return 0


@click.command("validate", context_settings=PASS_THROUGH, add_help_option=False)
@click.pass_context
def validate_cmd(ctx: click.Context) -> None:
    """istio-validation: a uid-1337 client dials 127.0.0.6:15002 inside --netns/--pid and must land on
    15001/15006 with that original destination. Exit 126 when it does not within --timeout."""
    if "--help" in ctx.args or "-h" in ctx.args:
        _parser().print_help()
        ctx.exit(0)
    ctx.exit(guarded(lambda: run(list(ctx.args))))
