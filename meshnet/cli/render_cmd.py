"""`meshnet render`: print what would be applied (restore text, Istio's transcript, or nft)."""

from __future__ import annotations

import os
import sys

import click

from meshnet.cli.errors import guarded
from meshnet.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from meshnet.spec.spec import Spec

FORMATS = ("restore", "transcript", "nft")


def _parser() -> argparse.ArgumentParser:
    from meshnet.spec import flags as istio_flags

    parser = istio_flags.make_parser("meshnet render")
    parser.add_argument("--ipv6", action="store_true", help="IPv6 pod (Istio detects it from the pod's addresses)")
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf")
    parser.add_argument("--format", default="restore", choices=FORMATS)
    parser.add_argument("--family", default="all", choices=("4", "6", "all"))
    parser.add_argument("-f", "--spec-file", default=None)
    parser.add_argument("--cni", action="store_true", help="render what the CNI plugin applies for a pod")
    parser.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE")
    return parser


def spec_for_render(argv: list[str]) -> tuple[Spec, str, str]:
    """Parse render's arguments into (Spec, format, family)."""
    from meshnet.spec import flags as istio_flags
    from meshnet.spec.resolvconf import read_nameservers

    parser = _parser()
    ns = parser.parse_args(argv)
    env = os.environ
    istio_given = any(getattr(ns, f.long.replace("-", "_")) is not None for f in istio_flags.FLAGS)
    if ns.cni:
        from meshnet.spec.annotations import parse_annotation_args, spec_from_annotations
        from meshnet.spec.values import parse_int

        uid = parse_int("--proxy-uid", ns.proxy_uid, 0, 0xFFFFFFFE) if ns.proxy_uid else None
        gid = parse_int("--proxy-gid", ns.proxy_gid, 0, 0xFFFFFFFE) if ns.proxy_gid else None
        others = [f.long for f in istio_flags.FLAGS if f.long not in ("proxy-uid", "proxy-gid")
                  and getattr(ns, f.long.replace("-", "_")) is not None]
        if others or ns.spec_file:
            raise UsageError("--cni takes --annotation, --proxy-uid and --proxy-gid only")
        spec = spec_from_annotations(parse_annotation_args(ns.annotation), proxy_uid=uid, proxy_gid=gid,
                                     enable_ipv6=ns.ipv6)
    elif ns.spec_file:
        from meshnet.spec.yaml_file import load_spec_file

        if istio_given or ns.annotation:
            raise UsageError("-f/--spec-file cannot be combined with istio flags or --annotation")
        spec = load_spec_file(ns.spec_file)
        if ns.ipv6:
            spec = spec.with_changes(enable_ipv6=True)
    else:
        if ns.annotation:
            raise UsageError("--annotation needs --cni")
        values = istio_flags.values_from(ns, env)
        servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if istio_flags.needs_resolv_conf(values):
            servers = read_nameservers(ns.resolv_conf)
        spec = istio_flags.spec_from_values(values, env, enable_ipv6=ns.ipv6, dns_servers=servers)
    return spec, ns.format, ns.family


def render_text(spec: Spec, fmt: str, family: str = "all") -> str:
    if fmt == "nft":
        from meshnet.plan.nft_builder import build_nft
        from meshnet.plan.render_nft import render_nft

        return render_nft(build_nft(spec))
    from meshnet.plan.istio_builder import build_iptables
    from meshnet.plan.render_restore import render_family, render_transcript

    plan = build_iptables(spec)
    if fmt == "transcript":
        return render_transcript(plan)
    parts = []
    if family in ("4", "all"):
        parts.append(render_family(plan, 4))
    if family in ("6", "all") and plan.ipv6:
        body = render_family(plan, 6)
        parts.append(("# ip6tables-restore\n" if family == "all" else "") + body)
    return "".join(parts)


@click.command(
    "render",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def render_cmd(ctx: click.Context) -> None:
    """Print the rules for a spec: istio-iptables flags, -f SPEC.yaml, or --cni --annotation K=V.

    Options: --format restore|transcript|nft, --ipv6, --resolv-conf FILE, --family 4|6|all.
    Ambient mode: --ambient (in-pod rules) or --ambient-host (node probe rules), see --ambient --help.
    """
    if ("--help" in ctx.args or "-h" in ctx.args) and ("--ambient" in ctx.args or "--ambient-host" in ctx.args):
        from meshnet.ambient.cli import render_parser

        render_parser().print_help()
        ctx.exit(0)
    if "--help" in ctx.args or "-h" in ctx.args:
        _parser().print_help()
        ctx.exit(0)

    def go() -> int:
        if "--ambient" in ctx.args or "--ambient-host" in ctx.args:
            from meshnet.ambient.cli import render_ambient

            sys.stdout.write(render_ambient(list(ctx.args)))
            return 0
        spec, fmt, family = spec_for_render(list(ctx.args))
        sys.stdout.write(render_text(spec, fmt, family))
        return 0

    ctx.exit(guarded(go))
