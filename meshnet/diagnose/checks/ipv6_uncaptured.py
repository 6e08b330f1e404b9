"""IPv4-only interception in a pod with global IPv6 addresses: its IPv6 traffic bypasses the proxy.

Istio programs ip6tables only when it decides IPv6 is on (the first usable address is IPv6, or
`--dual-stack` / ISTIO_DUAL_STACK and any usable IPv6 address). A dual-stack pod without dual
stack mode, or a run that stopped after the IPv4 restore, gets IPv4 rules only.
"""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT
from meshnet.diagnose.checks import Context, Finding
from meshnet.errors import MeshnetError

SCOPE_GLOBAL = "00"


def global_ipv6_addresses(ctx: Context) -> list[str]:
    """Global-scope IPv6 addresses not on lo (::6 on lo is Istio's own), as `ADDR dev IF`."""
    try:
        text = ctx.netns.read_proc_net("if_inet6")
    except FileNotFoundError:
        return []  # IPv6 disabled in this namespace
    out: list[str] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 6 and len(f[0]) == 32 and f[3] == SCOPE_GLOBAL and f[5] != "lo":
            import ipaddress

            out.append(f"{ipaddress.IPv6Address(int(f[0], 16))} dev {f[5]}")
    return out


def run(ctx: Context) -> list[Finding]:
    live = ctx.live
    v4 = [b for b in (LEGACY, NFT) if 4 in live.families(b)]
    v6 = [b for b in (LEGACY, NFT) if 6 in live.families(b)]
    if not v4 or v6 or (live.nft is not None and not live.nft.empty):
        return []  # no IPv4 rules, IPv6 rules exist, or native nftables (inet: both families)
    try:
        addresses = global_ipv6_addresses(ctx)
    except (MeshnetError, OSError) as exc:
        ctx.notes.append(f"IPv6 addresses not read: {exc}")
        return []
    if not addresses:
        return []
    # A spec that (by Istio's own rule: IPv4 first and no dual stack) says IPv6 is off asked for
    # exactly this: then it is context, not a problem.
    expected = ctx.spec is not None and not ctx.spec.enable_ipv6
    return [Finding(
        "ipv6-not-intercepted", "info" if expected else "warning",
        "the pod has global IPv6 addresses but Istio rules exist for IPv4 only: its IPv6 traffic bypasses "
        "the sidecar (in and out)",
        [f"IPv4 Istio rules in {', '.join(v4)}; no ISTIO_* chain in ip6tables (legacy or nft)",
         *(f"global IPv6 address {a}" for a in addresses)],
        "enable dual stack (ISTIO_DUAL_STACK=true in proxyMetadata, or --dual-stack) and re-run istio-init / "
        "recreate the pod; or remove the pod's IPv6 addresses")]
