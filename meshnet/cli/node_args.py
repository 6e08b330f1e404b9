"""Options shared by the node-wide commands (`doctor --all`, `collect --all`): which namespaces, CRI."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.diagnose.node import Target


def add_node_args(parser: argparse.ArgumentParser) -> None:
    node = parser.add_argument_group("node-wide (--all)")
    node.add_argument("--all", action="store_true", help="every pod network namespace on the node")
    node.add_argument("--cri", default=None, metavar="ENDPOINT",
                      help="CRI socket for pod names, e.g. unix:///run/containerd/containerd.sock")
    node.add_argument("--netns-dir", action="append", default=[], metavar="DIR",
                      help="scan this directory of namespace files instead of the runtimes' defaults "
                           "(/run/netns, /var/run/netns, docker's; repeatable)")
    node.add_argument("--no-proc", action="store_true", help="do not scan /proc/*/ns/net")
    node.add_argument("--include-host", action="store_true", help="also the caller's own (host) namespace")
    node.add_argument("--jobs", type=int, default=4, help="namespaces inspected in parallel (default 4)")
    node.add_argument("--pod-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="time bound per namespace (default 30)")


def node_targets(ns: argparse.Namespace) -> list[Target]:
    from meshnet.diagnose.node import NETNS_DIRS, attach_cri, discover

    if ns.jobs < 1 or ns.pod_timeout <= 0:
        raise UsageError("--jobs must be >= 1 and --pod-timeout > 0")
    targets = discover(ns.netns_dir or NETNS_DIRS, include_host=ns.include_host, proc=not ns.no_proc)
    if ns.cri:
        from meshnet.cri import list_sandboxes

        targets = attach_cri(targets, list_sandboxes(ns.cri))
    return targets
