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
        from meshnet.plan.render_nft import render_nft

        return render_nft(build_host_nft(spec) if ns.ambient_host else build_inpod_nft(spec))
    from meshnet.ambient import render
    from meshnet.ambient.xt_builder import build_host, build_inpod

    plan = build_host(spec) if ns.ambient_host else build_inpod(spec)
    if ns.format == "transcript":
        return render.render_transcript(plan)
    return render.render_restore(plan, ns.family)


def _apply_parser(prog: str) -> argparse.ArgumentParser:
    from meshnet.ambient.options import add_target_args
    from meshnet.cli.target import BACKEND_CHOICES

    parser = make_parser(prog)
    add_target_args(parser)
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    parser.add_argument("--reconcile", action="store_true", help="replace different Istio rules")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written")
    return parser


def apply_ambient_cli(argv: list[str]) -> str:
    from meshnet.ambient.apply import apply_ambient
    from meshnet.cli.target import refuse_own_namespace, resolve_target

    ns = _apply_parser("meshnet apply --ambient").parse_args(argv)
    if ns.ambient == ns.ambient_host:
        raise UsageError("give --ambient (a pod namespace) or --ambient-host (a node namespace)")
    netns = resolve_target(ns)
    spec = spec_from_options(ns)
    if ns.dry_run:
        from meshnet.apply.applier import detect_backend

        chosen = detect_backend(netns) if ns.backend == "auto" else ns.backend
        fmt = "nft" if chosen == "nftables" else "restore"
        head = f"# backend: {chosen}, namespace: {netns.label}, ipv6: {str(spec.enable_ipv6).lower()}\n"
        return head + render_ambient(["--ambient-host" if ns.ambient_host else "--ambient", *_spec_argv(argv),
                                      "--format", fmt])
    refuse_own_namespace(netns)
    result = apply_ambient(netns, spec, backend=ns.backend, reconcile=ns.reconcile, host=ns.ambient_host)
    return result.message + "\n"


def _spec_argv(argv: list[str]) -> list[str]:
    """The spec options of an apply command line (target/backend options dropped)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--netns", "--pid", "--backend"):
            skip = True
            continue
        if arg.split("=", 1)[0] in ("--netns", "--pid", "--backend", "--reconcile", "--dry-run", "--ambient",
                                    "--ambient-host"):
            continue
        out.append(arg)
    return out


def cleanup_ambient_cli(argv: list[str]) -> str:
    from meshnet.ambient.apply import cleanup_ambient
    from meshnet.ambient.options import _Parser, add_target_args
    from meshnet.cli.target import refuse_own_namespace, resolve_target

    parser = _Parser(prog="meshnet cleanup --ambient")
    parser.add_argument("--ambient", action="store_true")
    parser.add_argument("--ambient-host", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    add_target_args(parser)
    ns = parser.parse_args(argv)
    netns = resolve_target(ns)
    refuse_own_namespace(netns)
    result = cleanup_ambient(netns, host=ns.ambient_host)
    lines = [] if ns.quiet else [f"  {line}\n" for line in result.removed]
    return "".join(lines) + result.message + "\n"


def status_ambient_cli(argv: list[str]) -> tuple[str, int]:
    from meshnet.ambient.apply import ambient_drift
    from meshnet.ambient.options import add_target_args
    from meshnet.cli.target import resolve_target

    parser = make_parser("meshnet diff --ambient")
    add_target_args(parser)
    ns = parser.parse_args(argv)
    netns = resolve_target(ns)
    lines = ambient_drift(netns, spec_from_options(ns), host=ns.ambient_host)
    if not lines:
        return f"in sync: {netns.label} holds exactly the ambient rules of the spec\n", 0
    return "".join(f"{line}\n" for line in lines), 1
