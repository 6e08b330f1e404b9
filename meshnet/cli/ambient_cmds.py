"""The ambient variants of `render`, `apply`, `cleanup` and `diff`: click commands made from the
options declared once in meshnet/ambient/options.py (SPEC_OPTIONS). The sidecar commands hand a
command line holding `--ambient` or `--ambient-host` to these (MeshnetCommand's `ambient=`), so
`meshnet render --ambient --help` lists the ambient options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import click

from meshnet.ambient.options import SPEC_OPTIONS, Option
from meshnet.cli import options as o
from meshnet.cli.errors import guarded
from meshnet.cli.target import BACKEND_CHOICES


def _click_option(opt: Option) -> Callable[[o.F], o.F]:
    if opt.is_bool:
        return o.flag(*opt.names, help=opt.help)
    if opt.repeat:
        return click.option(*opt.names, multiple=True, metavar=opt.metavar, help=opt.help)
    return click.option(*opt.names, default=None, metavar=opt.metavar or "VALUE", help=opt.help)


spec_options = o.stack(*(_click_option(opt) for opt in SPEC_OPTIONS if opt.names[0] not in o.AMBIENT_SWITCHES))
switches = o.stack(*(_click_option(opt) for opt in SPEC_OPTIONS if opt.names[0] in o.AMBIENT_SWITCHES))


def _run(body: Callable[[SimpleNamespace], tuple[str, int]], params: dict[str, Any]) -> None:
    def go() -> int:
        text, code = body(SimpleNamespace(**params))
        sys.stdout.write(text)
        return code

    ctx = click.get_current_context()
    ctx.exit(guarded(go, prog=ctx.command_path))


@o.command("render")
@switches
@spec_options
@click.option("--format", default="transcript", show_default=True, type=o.Choice(("transcript", "restore", "nft")),
              help="transcript: Istio's golden spelling; restore: iptables-restore input; nft: nftables.")
@click.option("--family", default="all", show_default=True, type=o.Choice(("4", "6", "all")),
              help="With --format restore: only the IPv4 or IPv6 rules.")
def render_cmd(**params: Any) -> None:
    """Print Istio's ambient rules: the pod's redirection to ztunnel (--ambient) or the node's
    probe SNAT rules (--ambient-host), changing nothing."""
    from meshnet.ambient.cli import render_ambient

    _run(lambda ns: (render_ambient(ns), 0), params)


@o.command("apply")
@switches
@spec_options
@o.target_options(o.WRITE_TARGET)
@o.backend_option(BACKEND_CHOICES, "auto", "Where the rules go: auto detects the namespace's iptables backend.")
@o.flag("--reconcile", help="Replace different Istio ambient rules (one guardrailed swap).")
@o.flag("--dry-run", help="Print what would be written; nothing is changed.")
def apply_cmd(**params: Any) -> None:
    """Program a pod's namespace (--ambient) or a node's (--ambient-host) with Istio's ambient rules
    and policy routing, atomically and idempotently."""
    from meshnet.ambient.cli import apply_ambient_cli

    _run(lambda ns: (apply_ambient_cli(ns), 0), params)


@o.command("cleanup")
@switches
@o.target_options(o.WRITE_TARGET)
@o.flag("-q", "--quiet", help="Print only the summary line.")
def cleanup_cmd(**params: Any) -> None:
    """Remove exactly the ambient rules, ipsets and routing meshnet or Istio added."""
    from meshnet.ambient.cli import cleanup_ambient_cli

    _run(lambda ns: (cleanup_ambient_cli(ns), 0), params)


@o.command("diff")
@switches
@spec_options
@o.target_options(o.WRITE_TARGET)
def diff_cmd(**params: Any) -> None:
    """Compare a namespace's ambient rules with the spec's. Exit 0 in sync, 1 drift, 2 error."""
    from meshnet.ambient.cli import status_ambient_cli

    _run(status_ambient_cli, params)
