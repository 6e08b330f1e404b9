"""`meshnet apply`: program a pod namespace from istio-iptables flags or a spec file.

Also home of the spec argument handling that `meshnet status` shares (the target's is in cli/target.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import click

from meshnet.cli.errors import guarded
from meshnet.cli.target import BACKEND_CHOICES, add_target_args, refuse_own_namespace, resolve_target
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.flags import RunOptions
    from meshnet.spec.spec import Spec

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}



def spec_parser(prog: str) -> argparse.ArgumentParser:
    from meshnet.spec import flags as istio_flags

    parser = istio_flags.make_parser(prog)
    add_target_args(parser)
    parser.add_argument("-f", "--spec-file", default=None, help="spec YAML instead of istio flags")
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf", help="where DNS servers are read from")
    return parser


def istio_flags_given(ns: argparse.Namespace) -> bool:
    from meshnet.spec import flags as istio_flags

    run_flags = {"dry-run", "reconcile", "force-apply", "network-namespace", "native-nftables",
                 "force-iptables-binary", "cleanup-only", "skip-rule-apply", "run-validation", "probe-timeout",
                 "iptables-probe-port", "cni-mode"}
    return any(getattr(ns, f.long.replace("-", "_")) is not None for f in istio_flags.FLAGS
               if f.long not in run_flags)


def spec_and_options(ns: argparse.Namespace, netns: Netns) -> tuple[Spec, RunOptions]:
    """Spec from -f YAML or istio flags (+ env, as istio-iptables), IPv6 detected in the target."""
    from meshnet.apply.applier import spec_for_netns
    from meshnet.spec import flags as istio_flags

    values = istio_flags.values_from(ns, os.environ)
    opts = istio_flags.run_options_from_values(values)
    if ns.spec_file:
        from meshnet.spec.yaml_file import load_spec_file

        if istio_flags_given(ns):
            raise UsageError("-f/--spec-file cannot be combined with istio flags")
        spec = load_spec_file(ns.spec_file)
    else:
        from meshnet.spec.resolvconf import read_nameservers

        servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if istio_flags.needs_resolv_conf(values):
            servers = read_nameservers(ns.resolv_conf)
        spec = istio_flags.spec_from_values(values, os.environ, dns_servers=servers)
    return spec_for_netns(spec, netns), opts


def _parser() -> argparse.ArgumentParser:
    parser = spec_parser("meshnet apply")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    return parser


def _backend(requested: str, opts: RunOptions, netns: Netns) -> str:
    if opts.native_nftables:
        if requested not in ("auto", "nftables"):
            raise UsageError(f"--native-nftables contradicts --backend {requested}")
        return "nftables"
    if opts.force_iptables_binary:
        if requested != "auto":
            raise UsageError("--force-iptables-binary cannot be combined with --backend")
        from meshnet.apply.applier import detect_backend

        return detect_backend(netns, force=opts.force_iptables_binary)
    return requested


def run(argv: list[str]) -> int:
    if "--ambient" in argv or "--ambient-host" in argv:
        from meshnet.ambient.cli import apply_ambient_cli

        sys.stdout.write(apply_ambient_cli(argv))
        return 0
    ns = _parser().parse_args(argv)
    netns = resolve_target(ns)
    spec, opts = spec_and_options(ns, netns)
    if not opts.dry_run:
        refuse_own_namespace(netns)
    backend = _backend(ns.backend, opts, netns)
    if opts.dry_run:
        return _dry_run(spec, backend, netns)
    from meshnet.apply.applier import apply_spec

    result = apply_spec(netns, spec, backend=backend, reconcile=opts.reconcile, force=opts.force_apply)
    sys.stdout.write(f"{result.message}\n")
    from meshnet.apply.collision_prevention import enforce_and_report

    enforce_and_report(netns, spec, sys.stdout.write)
    return 0


def _dry_run(spec: Spec, backend: str, netns: Netns) -> int:
    from meshnet.apply.applier import detect_backend
    from meshnet.cli.render_cmd import render_text

    chosen = detect_backend(netns) if backend == "auto" else backend  # side-effect free
    sys.stdout.write(f"# backend: {chosen}, namespace: {netns.label}, ipv6: {str(spec.enable_ipv6).lower()}\n")
    sys.stdout.write(render_text(spec, "nft" if chosen == "nftables" else "restore"))
    return 0


@click.command("apply", context_settings=PASS_THROUGH, add_help_option=False)
@click.pass_context
def apply_cmd(ctx: click.Context) -> None:
    """Apply Istio interception rules to a namespace: --netns NAME|PATH or --pid PID, istio flags or -f SPEC.

    Options: --backend auto|iptables-legacy|iptables-nft|nftables|iptc, --reconcile, --dry-run, --force-apply.
    """
    if "--help" in ctx.args or "-h" in ctx.args:
        _parser().print_help()
        ctx.exit(0)
    ctx.exit(guarded(lambda: run(list(ctx.args))))
