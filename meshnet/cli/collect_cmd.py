"""`meshnet collect`: a support bundle (tar.gz) of a pod namespace, or of every one on the node."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded
from meshnet.errors import MeshnetError, UsageError


class CollectError(MeshnetError):
    exit_code = 2  # like the diagnostic commands: the bundle could not be written


def run_collect(ns: Any) -> int:
    from meshnet.apply.netns import Netns
    from meshnet.cli.node_args import node_targets
    from meshnet.diagnose.bundle.collect import collect_pod, node_info, write_bundle
    from meshnet.diagnose.node import Target, bounded

    if ns.all == (ns.netns is not None or ns.pid is not None):
        raise UsageError("give the pod's namespace (--netns NAME|PATH or --pid PID) or --all")
    host = Netns.resolve(netns=ns.host_netns)
    if ns.all:
        targets = node_targets(ns)
    else:
        one = Netns.resolve(netns=ns.netns, pid=ns.pid)
        targets = [Target(one, (0, one.inode), {"expect_mesh": True})]  # the pod asked about

    def failed(t: Target, reason: str) -> dict[str, object]:
        return {"error": reason, "label": t.netns.label}

    pods = bounded(targets, lambda t: collect_pod(t.netns, host, t.pod), failed, ns.jobs, ns.pod_timeout * 2)
    missed = [p for p in pods if "error" in p and "record" not in p]
    good = [p for p in pods if "record" in p]
    try:
        write_bundle(ns.output, good, node_info())
    except OSError as exc:
        raise CollectError(f"{ns.output}: cannot write the bundle: {exc.strerror or exc}") from None
    for p in missed:
        sys.stderr.write(f"meshnet collect: warning: {p['label']} not collected: {p['error']}\n")
    sys.stdout.write(f"{ns.output}: {len(good)} namespace(s)\n")
    return 2 if missed and not good else 0


@o.command("collect")
@o.target_options("or --all")
@click.option("-o", "--output", required=True, metavar="FILE.tar.gz", help="Where to write the bundle.")
@o.host_netns
@o.node_options
def collect_cmd(**params: Any) -> None:
    """Write a support bundle: rules of every backend with counters, nft, routing, addresses, sockets,
    conntrack, TCP counters, sysctls, versions; of one pod (--netns/--pid) or of every pod (--all).
    Read it offline with `meshnet doctor --bundle` or `meshnet conntrack analyze --bundle`.
    """
    click.get_current_context().exit(guarded(lambda: run_collect(SimpleNamespace(**params)),
                                             prog="meshnet collect"))
