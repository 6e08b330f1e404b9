"""DNS capture without the raw-table conntrack zones (Istio #33469).

When the proxy's own upstream DNS query and the app's redirected query share a five-tuple,
conntrack merges them and replies go to the wrong socket; Istio separates them with CT zones.
"""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.rules_info import facts


def run(ctx: Context) -> list[Finding]:
    f = facts(ctx.live)
    udp_dns = [r for r in f.dns_capture if "udp" in r]
    if not udp_dns or f.ct_zones:
        return []
    return [Finding(
        "dns-capture-without-ct-zones", "warning",
        "UDP DNS is redirected to the proxy, but no raw-table conntrack zone rules separate the proxy's "
        "upstream queries from the app's: replies can be delivered to the wrong socket under load",
        [*udp_dns[:4], "no CT --zone / `ct zone set` rules in the raw table"],
        "re-apply the full Istio rule set (istio-iptables with --redirect-dns also writes the raw-table "
        "ISTIO_OUTPUT_DNS / ISTIO_INBOUND zone rules); see Istio #33469")]
