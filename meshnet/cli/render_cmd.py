"""`meshnet render`: print what would be applied (restore text, Istio's transcript, or nft)."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.spec.spec import Spec

FORMATS = ("restore", "transcript", "nft")


def spec_for_render(ns: Any) -> tuple[Spec, str, str]:
    """render's options -> (Spec, format, family)."""
    from meshnet.spec import flags as istio_flags
    from meshnet.spec.resolvconf import read_nameservers

    env = os.environ
    istio_given = bool(o.istio_given(vars(ns)))
    if ns.cni:
        from meshnet.spec.annotations import parse_annotation_args, spec_from_annotations
        from meshnet.spec.values import parse_int

        uid = parse_int("--proxy-uid", ns.proxy_uid, 0, 0xFFFFFFFE) if ns.proxy_uid else None
        gid = parse_int("--proxy-gid", ns.proxy_gid, 0, 0xFFFFFFFE) if ns.proxy_gid else None
        others = [f for f in o.istio_given(vars(ns)) if f not in ("--proxy-uid", "--proxy-gid")]
        if others or ns.spec_file:
            raise UsageError("--cni takes --annotation, --proxy-uid and --proxy-gid only")
        spec = spec_from_annotations(parse_annotation_args(list(ns.annotation)), proxy_uid=uid, proxy_gid=gid,
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
        values = istio_flags.values_from(o.parsed_flags(vars(ns)), env)
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


def _render_ambient() -> click.Command:
    from meshnet.cli.ambient_cmds import render_cmd

    return render_cmd


@o.command("render", ambient=_render_ambient)
@click.option("--format", default="restore", show_default=True, type=o.Choice(FORMATS),
              help="restore: iptables-restore input per family; transcript: Istio's dry-run output; nft: nftables.")
@click.option("--family", default="all", show_default=True, type=o.Choice(("4", "6", "all")),
              help="With --format restore: only the IPv4 or IPv6 rules.")
@o.flag("--ipv6", help="Render for an IPv6 pod (Istio detects it from the pod's addresses).")
@o.spec_file
@o.cni_spec
@o.resolv_conf
@o.ambient_switches
@o.istio_flags
def render_cmd(**params: Any) -> None:
    """Print the rules a spec gives, changing nothing: from Istio's flags, -f SPEC.yaml, or
    --cni --annotation K=V (what the CNI plugin applies). Ambient mode: --ambient or --ambient-host.
    """

    def go() -> int:
        spec, fmt, family = spec_for_render(SimpleNamespace(**params))
        sys.stdout.write(render_text(spec, fmt, family))
        return 0

    click.get_current_context().exit(guarded(go))
