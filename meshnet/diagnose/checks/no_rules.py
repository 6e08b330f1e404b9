"""No interception rules at all: the pod started before its rules were installed (Istio #14327)."""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT
from meshnet.diagnose.checks import Context, Finding


def run(ctx: Context) -> list[Finding]:
    live = ctx.live
    if live.istio_backends():
        return []
    legacy = {fam: names for fam, names in live.legacy_tables.items() if names}
    evidence = [
        f"{LEGACY}: " + (", ".join(f"v{f} tables {' '.join(n)}" for f, n in legacy.items()) + " without ISTIO_* chains"
                         if legacy else "no legacy tables (/proc/thread-self/net/ip{,6}_tables_names empty)"),
        f"{NFT}: no ISTIO_* chains (IPv4 and IPv6)",
        "nftables: " + ("not readable" if live.nft is None else "no inet istio-proxy-* tables"),
        *live.errors,
    ]
    return [Finding(
        "no-interception-rules", "critical",
        "no Istio interception rules in the pod: its traffic bypasses the sidecar entirely",
        evidence,
        "the pod most likely started before istio-init / the CNI plugin installed its rules (the CNI race, "
        "Istio #14327): delete the pod so it is recreated, and enable istio-validation (or a repair "
        "controller) so such pods fail instead of running unmeshed")]
