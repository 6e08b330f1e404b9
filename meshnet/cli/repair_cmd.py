"""`meshnet repair --all`: reconcile the node's meshed pods that lack (or drifted from) their rules, in place."""

from __future__ import annotations

import json
import sys

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded

DEFAULT_CRI = "unix:///run/containerd/containerd.sock"


@o.command("repair")
@o.flag("--all", "all_pods", required=True,
              help="Every pod sandbox the CRI runtime reports on this node (the only mode).")
@click.option("--cri", default=DEFAULT_CRI, show_default=True, metavar="ENDPOINT",
              help="The runtime's CRI socket (containerd or CRI-O), e.g. unix:///run/crio/crio.sock.")
@click.option("--conflist", default=None, type=click.Path(dir_okay=False),
              help="The conflist whose meshnet-cni entry decides pods as CNI ADD does (default: the first "
                   "one in --conf-dir that has meshnet-cni, else meshnet-cni's defaults).")
@click.option("--conf-dir", default=None, type=click.Path(file_okay=False),
              help="Where to look for that conflist (default /etc/cni/net.d).")
@o.flag("--dry-run", help="Only report what would be repaired; change nothing.")
@click.option("--max-repairs", default=10, show_default=True, type=click.IntRange(min=0),
              help="At most this many pods are changed in one run, so a bug cannot storm a node.")
@o.flag("--json", "as_json", help="One JSON document: a row per pod.")
def repair_cmd(all_pods: bool, cri: str, conflist: str | None, conf_dir: str | None, dry_run: bool,
               max_repairs: int, as_json: bool) -> None:
    """Repair in place the pods that should be meshed (decided as CNI ADD would) but have no, partial
    or drifted rules. Exit 0: nothing left to repair; 1: pods still need repair (dry run, invalid
    annotations, busy, over the limit, failed); 2: the node could not be inspected."""

    def go() -> int:
        from meshnet.apply.repair import exit_code, load_config, repair_all
        from meshnet.errors import UsageError

        if not all_pods:
            raise UsageError("--all is the only mode: give --all (or --all=true)")
        from meshnet.cri import list_sandboxes, sandbox_ready

        config = load_config(conflist, conf_dir)
        log = None if as_json else (lambda line: sys.stdout.write(line + "\n"))
        rows = repair_all(list_sandboxes(cri), config, dry_run=dry_run, max_repairs=max_repairs, log=log,
                          still_ready=lambda sandbox: sandbox_ready(cri, sandbox))
        code = exit_code(rows)
        if as_json:
            sys.stdout.write(json.dumps({"dry_run": dry_run, "pods": [r.to_dict() for r in rows], "exit": code},
                                        indent=2) + "\n")
        else:
            repaired = sum(r.action == "repaired" for r in rows)
            sys.stdout.write(f"{len(rows)} pod(s) on the node, {repaired} repaired\n")
        return code

    raise SystemExit(guarded(go))
