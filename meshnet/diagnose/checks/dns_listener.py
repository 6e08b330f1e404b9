"""DNS capture is on but nothing is bound on the DNS proxy's port: every lookup of the app fails."""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.intent import DNS_PROXY_PORT
from meshnet.diagnose.checks.listeners import bound_ports
from meshnet.diagnose.checks.rules_info import facts


def run(ctx: Context) -> list[Finding]:
    f = facts(ctx.live)
    if not f.dns_capture:
        return []
    wanted = sorted(proto for proto, port in f.captures if port == DNS_PROXY_PORT) or ["udp", "tcp"]
    missing = [proto for proto in wanted if DNS_PROXY_PORT not in bound_ports(ctx, proto)]
    if not missing:
        return []
    return [Finding(
        "dns-proxy-not-listening", "critical",
        f"DNS is captured to :{DNS_PROXY_PORT} but nothing is bound there ({', '.join(missing)}): the app's "
        "DNS lookups time out or are refused",
        [*(f"DNS capture rule: {r}" for r in f.dns_capture[:4]),
         f"bound on :{DNS_PROXY_PORT}: " + (", ".join(p for p in ("udp", "tcp") if p not in missing) or "nothing")],
        "enable the sidecar's DNS proxy (ISTIO_META_DNS_CAPTURE=true on the proxy) or render the rules without "
        "DNS capture (istio-iptables without --redirect-dns)")]
