"""Rules in the wrong iptables backend, or in several at once (the top issue in Linkerd, Kuma, Istio).

The kernel runs every backend's hooks, but tools and the host's own rules live in one: ISTIO
chains in iptables-legacy on an nft host are invisible to `iptables` (nft) users and to drift
checks; rules in two backends both act, in an order nobody chose.
"""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT
from meshnet.diagnose.checks import Context, Finding
from meshnet.errors import MeshnetError
from meshnet.state.live import host_backend


def run(ctx: Context) -> list[Finding]:
    holders = ctx.live.istio_backends()
    out: list[Finding] = []
    if len(holders) > 1:
        out.append(Finding(
            "rules-in-several-backends", "critical",
            f"Istio rules are installed in {len(holders)} backends at once: {', '.join(holders)}; the kernel runs "
            "all of them, so packets are captured (or bypassed) by whichever hook runs first",
            [f"{b}: {ctx.live.rule_count(b)} rules" for b in holders],
            "remove the stale set (`meshnet` cleanup of that backend) and pin one backend for istio-init and the "
            "CNI plugin (FORCE_IPTABLES_BINARY or the nftables option)"))
    if ctx.host is None or ctx.host.path == ctx.netns.path:
        return out
    try:
        host, evidence = host_backend(ctx.host)
    except MeshnetError as exc:
        ctx.notes.append(f"host backend not read: {exc}")
        return out
    for pod_backend, other in ((LEGACY, NFT), (NFT, LEGACY)):
        if pod_backend in holders and other not in holders and host == other:
            out.append(Finding(
                "backend-mismatch", "critical",
                f"the pod's Istio rules are in {pod_backend} while the host's rules are in {other}",
                [f"pod ({ctx.netns.label}): ISTIO_* chains in {pod_backend} "
                 f"({ctx.live.rule_count(pod_backend)} rules)", evidence],
                f"use the host's backend for the pod: set FORCE_IPTABLES_BINARY={other.split('-')[1]} (or fix the "
                f"image's iptables alternative), then remove the {pod_backend} rules"))
    return out
