"""`meshnet cleanup`: remove every trace of Istio/meshnet interception from a namespace."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded

CHOICES = ("all", "iptables-legacy", "iptables-nft", "nftables", "iptc")


def _cleanup_ambient() -> click.Command:
    from meshnet.cli.ambient_cmds import cleanup_cmd

    return cleanup_cmd


def run(ns: Any) -> int:
    from meshnet.apply.applier import cleanup
    from meshnet.cli.target import refuse_own_namespace, resolve_target

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


@o.command("cleanup", ambient=_cleanup_ambient)
@o.target_options(o.WRITE_TARGET)
@o.backend_option(CHOICES, "all", "Only this backend's rules (all also removes TPROXY routing and ::6 on lo).")
@o.flag("-q", "--quiet", help="Print only the summary line.")
@o.ambient_switches
def cleanup_cmd(**params: Any) -> None:
    """Remove every trace of Istio's interception from a pod's namespace: ISTIO_* chains and jumps
    (every table, both families, legacy and nft), Istio's nft tables, TPROXY routing and ::6."""
    click.get_current_context().exit(guarded(lambda: run(SimpleNamespace(**params))))
