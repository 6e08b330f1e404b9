"""`meshnet cleanup`: remove every trace of Istio/meshnet interception from a namespace."""

from __future__ import annotations

import argparse
import sys

import click

from meshnet.cli.errors import guarded

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
CHOICES = ("all", "iptables-legacy", "iptables-nft", "nftables", "iptc")


def _parser() -> argparse.ArgumentParser:
    from meshnet.cli.apply_cmd import add_target_args
    from meshnet.spec.flags import new_parser

    parser = new_parser("meshnet cleanup")
    add_target_args(parser)
    parser.add_argument("--backend", default="all", choices=CHOICES,
                        help="only this backend's rules (default all, which also removes TPROXY routing and ::6)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    return parser


def run(argv: list[str]) -> int:
    if "--ambient" in argv or "--ambient-host" in argv:
        from meshnet.ambient.cli import cleanup_ambient_cli

        sys.stdout.write(cleanup_ambient_cli(argv))
        return 0
    from meshnet.apply.applier import cleanup
    from meshnet.cli.apply_cmd import refuse_own_namespace, resolve_target

    ns = _parser().parse_args(argv)
    netns = resolve_target(ns)
    refuse_own_namespace(netns)
    result = cleanup(netns, backend=ns.backend)
    if not ns.quiet:
        for line in result.removed:
            sys.stdout.write(f"  {line}\n")
    sys.stdout.write(f"{result.message}\n")
    if ns.backend == "all":
        from meshnet.apply.collision_prevention import restore_quietly

        restored = restore_quietly(netns)
        if restored.message or restored.warning:
            sys.stdout.write(f"{restored.message or restored.warning}\n")
    return 0


@click.command("cleanup", context_settings=PASS_THROUGH, add_help_option=False)
@click.pass_context
def cleanup_cmd(ctx: click.Context) -> None:
    """Remove ISTIO_* chains and jumps (every table, both families, legacy and nft), Istio's nft tables,
    TPROXY routing and ::6: --netns NAME|PATH or --pid PID [--backend ...]."""
    if "--help" in ctx.args or "-h" in ctx.args:
        _parser().print_help()
        ctx.exit(0)
    ctx.exit(guarded(lambda: run(list(ctx.args))))
