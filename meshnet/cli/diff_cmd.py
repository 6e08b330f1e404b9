"""`meshnet diff`: live rules of a pod against the expected spec, per chain, exit 1 when they differ.

The spec comes from istio-iptables flags (+ env), `-f SPEC.yaml`, or `--cni --annotation K=V`;
IPv6 is expected the way Istio decides it, from the pod's own addresses. The argument helpers
here are shared with `meshnet doctor`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from meshnet.cli.errors import diagnostic
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.spec import Spec

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def make_parser(prog: str) -> argparse.ArgumentParser:
    from meshnet.spec import flags as istio_flags

    parser = istio_flags.make_parser(prog)
    target = parser.add_argument_group("target namespace")
    target.add_argument("--netns", default=None, metavar="NAME|PATH",
                        help="pod network namespace (default: the one meshnet runs in, e.g. kubectl debug)")
    target.add_argument("--pid", default=None, type=int, help="a process in the pod")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    spec = parser.add_argument_group("expected spec (besides the istio-iptables flags)")
    spec.add_argument("-f", "--spec-file", default=None)
    spec.add_argument("--cni", action="store_true", help="expect what the CNI plugin applies (with --annotation)")
    spec.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    spec.add_argument("--resolv-conf", default="/etc/resolv.conf", help="DNS servers for --redirect-dns")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    if "--help" in argv or "-h" in argv:
        parser.print_help()
        raise SystemExit(0)
    return parser.parse_args(argv)


def resolve_netns(ns: argparse.Namespace) -> Netns:
    """--netns/--pid, or the namespace meshnet runs in (a debug container in the pod)."""
    from meshnet.cli.inspect_target import inspect_target

    if ns.netns is not None and ns.pid is not None:
        raise UsageError("give either --netns or --pid, not both")
    return inspect_target(ns.netns, ns.pid)


def spec_given(ns: argparse.Namespace) -> bool:
    from meshnet.spec import flags as istio_flags

    flags = any(getattr(ns, f.long.replace("-", "_")) is not None for f in istio_flags.FLAGS)
    return flags or bool(ns.spec_file) or ns.cni


def expected_spec(ns: argparse.Namespace, netns: Netns) -> Spec:
    """The spec the user expects, with IPv6 decided from the pod's addresses like Istio."""
    from meshnet.apply.applier import spec_for_netns
    from meshnet.spec import flags as istio_flags

    if ns.cni:
        from meshnet.spec.annotations import parse_annotation_args, spec_from_annotations
        from meshnet.spec.values import parse_int

        uid = parse_int("--proxy-uid", ns.proxy_uid, 0, 0xFFFFFFFE) if ns.proxy_uid else None
        gid = parse_int("--proxy-gid", ns.proxy_gid, 0, 0xFFFFFFFE) if ns.proxy_gid else None
        spec = spec_from_annotations(parse_annotation_args(ns.annotation), proxy_uid=uid, proxy_gid=gid)
    elif ns.spec_file:
        from meshnet.spec.yaml_file import load_spec_file

        if any(getattr(ns, f.long.replace("-", "_")) is not None for f in istio_flags.FLAGS):
            raise UsageError("-f/--spec-file cannot be combined with istio flags")
        spec = load_spec_file(ns.spec_file)
    else:
        from meshnet.spec.resolvconf import read_nameservers

        if ns.annotation:
            raise UsageError("--annotation needs --cni")
        values = istio_flags.values_from(ns, os.environ)
        servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if istio_flags.needs_resolv_conf(values):
            servers = read_nameservers(ns.resolv_conf)
        spec = istio_flags.spec_from_values(values, os.environ, dns_servers=servers)
    return spec_for_netns(spec, netns)


def run_diff(argv: list[str]) -> int:
    if "--ambient" in argv or "--ambient-host" in argv:
        from meshnet.ambient.cli import status_ambient_cli

        text, code = status_ambient_cli(argv)
        sys.stdout.write(text)
        return code
    from meshnet.apply.applier import detect_backend
    from meshnet.diagnose.checks.drift import diff_live
    from meshnet.state.live import read_live

    ns = parse(make_parser("meshnet diff"), argv)
    if not spec_given(ns):
        raise UsageError("give the expected spec: istio-iptables flags, -f SPEC.yaml, or --cni --annotation K=V")
    netns = resolve_netns(ns)
    spec = expected_spec(ns, netns)
    live = read_live(netns)
    if not live.xtables and live.nft is None:
        raise UsageError(f"cannot read any rules in {netns.label}: {'; '.join(live.errors)}")
    diff = diff_live(live, spec, detect_backend(netns))
    if ns.json:
        out = {"netns": netns.label, **diff.to_dict(), "errors": live.errors}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for line in diff.lines():
            sys.stdout.write(line + "\n")
        for err in live.errors:
            sys.stderr.write(f"meshnet diff: warning: {err}\n")
        state = "in sync with the spec" if diff.empty else f"{len(diff.lines())} difference(s)"
        sys.stdout.write(f"{netns.label} ({', '.join(diff.backends)}): {state}\n")
    return 0 if diff.empty else 1


@click.command("diff", context_settings=PASS_THROUGH, add_help_option=False)
@click.pass_context
def diff_cmd(ctx: click.Context) -> None:
    """Compare a pod's live rules with the expected spec: missing / extra / reordered rules per chain.

    meshnet diff [--netns NAME|--pid PID] [ISTIO FLAGS | -f SPEC.yaml | --cni --annotation K=V] [--json]
    """
    ctx.exit(diagnostic(lambda: run_diff(list(ctx.args)), prog="meshnet diff"))
