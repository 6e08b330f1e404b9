"""The node-wide commands (`doctor --all`, `collect --all`): options (meshnet.cli.options.node_options) -> targets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.diagnose.node import Target


def node_targets(ns: Any) -> list[Target]:
    from meshnet.diagnose.node import NETNS_DIRS, attach_cri, discover

    if ns.jobs < 1 or ns.pod_timeout <= 0:
        raise UsageError("--jobs must be >= 1 and --pod-timeout > 0")
    targets = discover(ns.netns_dir or NETNS_DIRS, include_host=ns.include_host, proc=not ns.no_proc)
    if ns.cri:
        from meshnet.cri import list_sandboxes

        targets = attach_cri(targets, list_sandboxes(ns.cri))
    return targets
