"""Ambient pods are explained and diagnosed in ambient's terms: traffic goes to the node's ztunnel,
not to a sidecar (Envoy). Detection from the live rules: istio-cni's in-pod chains (`ISTIO_PRERT` in
iptables, `istio-prerouting` in the `istio-ambient-*` nft tables), which sidecar mode never creates.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.state.live import LiveState

AMBIENT_XT_CHAIN = "ISTIO_PRERT"
AMBIENT_NFT_CHAIN = "istio-prerouting"
# Longest first: each sidecar phrase once, then the generic ones.
_WORDS = (
    ("the sidecar (istio-proxy) container is running and ready; if it runs, its listener ports must match the "
     "rules (-p/-z flags vs the proxy's config)",
     "ztunnel runs on this node and has this pod (its in-pod listeners on 15001/15006/15008, and 15053 with "
     "DNS capture); if it does, restart the node agent (meshnet cni agent) so it hands the pod to ztunnel again"),
    ("enable the sidecar's DNS proxy (ISTIO_META_DNS_CAPTURE=true on the proxy) or render the rules without DNS "
     "capture (istio-iptables without --redirect-dns)",
     "ztunnel's DNS proxy must be on (its DNS_CAPTURE setting), or the pod's DNS not captured (annotation "
     "ambient.istio.io/dns-capture=false, or the agent without redirect_dns)"),
    ("the sidecar's", "ztunnel's"),
    ("the sidecar", "ztunnel"),
    ("not the proxy", "not ztunnel"),
    ("Envoy 503 UF", "a refused or reset connection through ztunnel"),
)


def is_ambient(live: LiveState) -> bool:
    """The live rules are ambient mode's in-pod rules (any backend)."""
    for families in live.xtables.values():
        for rs in families.values():
            if any(AMBIENT_XT_CHAIN in rs.chain_names(t) for t in rs.tables):
                return True
    return live.nft is not None and any(chain == AMBIENT_NFT_CHAIN for _, chain in live.nft.chains)


def ztunnel_words(text: str) -> str:
    for sidecar, ambient in _WORDS:
        text = text.replace(sidecar, ambient)
    return text
