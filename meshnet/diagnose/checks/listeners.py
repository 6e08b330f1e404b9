"""Rules send traffic to the proxy's ports, but nothing listens there: every captured connection fails."""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.intent import DNS_PROXY_PORT
from meshnet.diagnose.checks.rules_info import facts

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_UDP_BOUND = "07"  # TCP_CLOSE, what an unconnected bound UDP socket shows


def _ports(text: str, state: str) -> set[int]:
    out = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 3 and cols[3] == state:
            out.add(int(cols[1].rsplit(":", 1)[1], 16))
    return out


def bound_ports(ctx: Context, proto: str) -> set[int]:
    state = _LISTEN if proto == "tcp" else _UDP_BOUND
    ports: set[int] = set()
    for name in (proto, f"{proto}6"):
        try:
            ports |= _ports(ctx.netns.read_proc_net(name), state)
        except FileNotFoundError:
            continue  # IPv6 disabled
    return ports


def run(ctx: Context) -> list[Finding]:
    # The DNS proxy's port has its own finding (dns_listener): a missing DNS proxy is another root cause.
    wanted = {(proto, port) for proto, port in facts(ctx.live).captures if port != DNS_PROXY_PORT}
    if not wanted:
        return []
    bound = {proto: bound_ports(ctx, proto) for proto in ("tcp", "udp")}
    missing = sorted((proto, port) for proto, port in wanted if port not in bound[proto])
    if not missing:
        return []
    names = ", ".join(f"{proto} :{port}" for proto, port in missing)
    return [Finding(
        "proxy-not-listening", "critical",
        f"traffic is redirected to {names} but nothing listens there in the pod: captured connections are "
        "refused or dropped",
        [f"rules capture to: {', '.join(f'{p} :{n}' for p, n in sorted(wanted))}",
         f"listening tcp ports: {sorted(bound['tcp']) or 'none'}; bound udp ports: {sorted(bound['udp']) or 'none'}"],
        "check that the sidecar (istio-proxy) container is running and ready; if it runs, its listener ports "
        "must match the rules (-p/-z flags vs the proxy's config)")]
