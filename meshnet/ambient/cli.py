"""`meshnet render --ambient|--ambient-host`: Istio's ambient rules for the given spec."""

from __future__ import annotations

import argparse

from meshnet.ambient.options import make_parser, spec_from_options
from meshnet.errors import UsageError


def render_parser() -> argparse.ArgumentParser:
    parser = make_parser("meshnet render --ambient")
    parser.add_argument("--format", default="transcript", choices=("transcript", "restore", "nft"))
    parser.add_argument("--family", default="all", choices=("4", "6", "all"))
    return parser


def render_ambient(argv: list[str]) -> str:
    ns = render_parser().parse_args(argv)
    if ns.ambient and ns.ambient_host:
        raise UsageError("--ambient and --ambient-host are two different namespaces: give one")
    spec = spec_from_options(ns)
    if ns.format == "nft":
        from meshnet.ambient.nft_builder import build_host_nft, build_inpod_nft
        from meshnet.render.nft import render_nft

        return render_nft(build_host_nft(spec) if ns.ambient_host else build_inpod_nft(spec))
    from meshnet.ambient import render
    from meshnet.ambient.xt_builder import build_host, build_inpod

    plan = build_host(spec) if ns.ambient_host else build_inpod(spec)
    if ns.format == "transcript":
        return render.render_transcript(plan)
    return render.render_restore(plan, ns.family)
