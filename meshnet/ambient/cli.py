"""The ambient commands' work, from their parsed options (meshnet/cli/ambient_cmds.py declares them):
render, apply, cleanup and diff of Istio's ambient rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.ambient.options import spec_from_options
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.ambient.spec import AmbientSpec


def one_side(ns: Any) -> bool:
    """True for the node's rules (--ambient-host), False for the pod's (--ambient)."""
    if ns.ambient and ns.ambient_host:
        raise UsageError("--ambient and --ambient-host are two different namespaces: give one")
    if not (ns.ambient or ns.ambient_host):
        raise UsageError("give --ambient (a pod namespace) or --ambient-host (a node namespace)")
    return bool(ns.ambient_host)


def render_text(spec: AmbientSpec, host: bool, fmt: str, family: str = "all") -> str:
    if fmt == "nft":
        from meshnet.ambient.nft_builder import build_host_nft, build_inpod_nft
        from meshnet.plan.render_nft import render_nft

        return render_nft(build_host_nft(spec) if host else build_inpod_nft(spec))
    from meshnet.ambient import render
    from meshnet.ambient.xt_builder import build_host, build_inpod

    plan = build_host(spec) if host else build_inpod(spec)
    if fmt == "transcript":
        return render.render_transcript(plan)
    return render.render_restore(plan, family)


def render_ambient(ns: Any) -> str:
    host = one_side(ns)
    return render_text(spec_from_options(ns), host, ns.format, ns.family)


def apply_ambient_cli(ns: Any) -> str:
    from meshnet.ambient.apply import apply_ambient
    from meshnet.cli.target import refuse_own_namespace, resolve_target

    host = one_side(ns)
    netns = resolve_target(ns)
    spec = spec_from_options(ns)
    if ns.dry_run:
        from meshnet.apply.applier import detect_backend

        chosen = detect_backend(netns) if ns.backend == "auto" else ns.backend
        head = f"# backend: {chosen}, namespace: {netns.label}, ipv6: {str(spec.enable_ipv6).lower()}\n"
        return head + render_text(spec, host, "nft" if chosen == "nftables" else "restore")
    refuse_own_namespace(netns)
    result = apply_ambient(netns, spec, backend=ns.backend, reconcile=ns.reconcile, host=host)
    return result.message + "\n"


def cleanup_ambient_cli(ns: Any) -> str:
    from meshnet.ambient.apply import cleanup_ambient
    from meshnet.cli.target import refuse_own_namespace, resolve_target

    netns = resolve_target(ns)
    refuse_own_namespace(netns)
    result = cleanup_ambient(netns, host=bool(ns.ambient_host))
    lines = [] if ns.quiet else [f"  {line}\n" for line in result.removed]
    return "".join(lines) + result.message + "\n"


def status_ambient_cli(ns: Any) -> tuple[str, int]:
    from meshnet.ambient.apply import ambient_drift
    from meshnet.cli.target import resolve_target

    host = one_side(ns)
    netns = resolve_target(ns)
    lines = ambient_drift(netns, spec_from_options(ns), host=host)
    if not lines:
        return f"in sync: {netns.label} holds exactly the ambient rules of the spec\n", 0
    return "".join(f"{line}\n" for line in lines), 1
