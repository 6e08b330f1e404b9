"""Canonical probe packets through `explain`, checked against what the rules' structure intends.

For every backend and family holding Istio rules: outbound TCP from an app uid to a cluster
address (must reach the outbound listener), the same from the proxy's uid (must bypass), inbound
TCP to an app port (must reach the inbound listener) and to the ports that always bypass
(15020/15021/15090, 15008 in REDIRECT mode, the excluded ones), and DNS over UDP and TCP when the
rules capture DNS. A probe whose verdict is not the intended one is a finding, with the walked path
as evidence and the fix read from where the path broke off.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from meshnet.apply.backends import NFTABLES
from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.intent import DNS_PROXY_PORT, Intent, NRule, intents
from meshnet.lite.records import dataclass

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.diagnose.explain.iptables import Explanation
    from meshnet.diagnose.explain.packet import Packet

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
CLUSTER_CANDIDATES = {4: ("10.96.0.10", "172.20.0.10", "192.168.255.10", "100.64.0.10"),
                      6: ("fd00:10:96::a", "fd12:3456::a", "2001:db8:96::a")}
PEER = {4: "10.244.255.254", 6: "fd00:244::fe"}
DNS_SERVER = {4: "10.96.0.10", 6: "fd00:10:96::a"}
APP_ID = 1000
# kind -> (severity, summary)
KINDS = {
    "outbound-not-captured": "the pod's outbound traffic is not captured: it leaves without the sidecar",
    "inbound-not-captured": "inbound traffic to the pod's ports is not captured: it reaches the app directly",
    "dns-not-captured": "DNS capture is configured but DNS queries are not redirected to the DNS proxy (:15053)",
    "bypass-captured": "traffic that must bypass the sidecar is captured (the proxy's own traffic or an "
                       "excluded port)",
}


@dataclass(frozen=True)
class Probe:
    name: str
    packet: Packet
    expect: str  # "capture" or "bypass"
    port: int | None  # the listener a capture must reach
    kind: str  # finding kind when the verdict differs


@dataclass(frozen=True)
class PodAddr:
    iface: str
    addr: IPAddr


def pod_addresses(netns: Netns) -> dict[int, PodAddr]:
    """The first usable address of each family and its interface (`ip -o addr`)."""
    cp = netns.run(["ip", "-o", "addr", "show"], check=False)
    out: dict[int, PodAddr] = {}
    for line in cp.stdout.splitlines():
        words = line.split()
        if len(words) < 4 or words[2] not in ("inet", "inet6"):
            continue
        addr = ipaddress.ip_address(words[3].split("/")[0])
        if addr.is_loopback or addr.is_link_local or words[1] == "lo":
            continue
        out.setdefault(addr.version, PodAddr(words[1].split("@")[0], addr))
    return out


def _pick_cluster(intent: Intent, fam: int) -> IPAddr:
    nets = [n for n in (_net(c) for c in intent.outbound_included_cidrs) if n and n.version == fam]
    cands: list[IPAddr] = [n[min(10, n.num_addresses - 1)] for n in nets] or \
        [ipaddress.ip_address(c) for c in CLUSTER_CANDIDATES[fam]]
    excluded = [n for n in (_net(c) for c in intent.outbound_excluded_cidrs) if n]
    for c in cands:
        if not any(c.version == n.version and c in n for n in excluded):
            return c
    return cands[0]


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.split(",")[0].strip(), strict=False)
    except ValueError:
        return None


def _free_port(start: int, avoid: set[int]) -> int:
    p = start
    while p in avoid:
        p += 1
    return p


def probes(intent: Intent, fam: int, pod: PodAddr, dns_limited: bool = False, cidr_limited: bool = False) \
        -> list[Probe]:
    """`dns_limited`: some family's DNS rules name their servers (captureAllDNS off);
    `cidr_limited`: some family's outbound capture is limited to CIDRs (includeOutboundIPRanges)."""
    from meshnet.diagnose.explain.packet import Packet

    out: list[Probe] = []
    app = _free_port(APP_ID, intent.proxy_uids | intent.proxy_gids)
    peer = ipaddress.ip_address(PEER[fam])
    own_cidrs = [n for n in (_net(c) for c in intent.outbound_included_cidrs) if n and n.version == fam]
    # includeOutboundIPRanges of the other family only: this family is not captured on purpose.
    if intent.outbound_port is not None and (own_cidrs or not cidr_limited):
        dst = _pick_cluster(intent, fam)
        dport = min(intent.outbound_included_ports) if intent.outbound_included_ports and \
            not intent.outbound_included_cidrs else _free_port(80, intent.outbound_excluded_ports)
        out.append(Probe("outbound from an app uid", Packet("tcp", pod.addr, 40000, dst, dport, "out", uid=app,
                                                            gid=app, oif=pod.iface),
                         "capture", intent.outbound_port, "outbound-not-captured"))
        for uid in sorted(intent.proxy_uids) or sorted(intent.proxy_gids):
            gid = min(intent.proxy_gids) if intent.proxy_gids else uid
            out.append(Probe(f"outbound from the proxy (uid {uid})",
                             Packet("tcp", pod.addr, 40001, dst, dport, "out", uid=uid, gid=gid, oif=pod.iface),
                             "bypass", None, "bypass-captured"))
            break
    if intent.inbound_port is not None:
        app_port = min(intent.inbound_included) if intent.inbound_included else \
            _free_port(8080, intent.inbound_excluded)
        out.append(Probe(f"inbound to app port {app_port}",
                         Packet("tcp", peer, 50000, pod.addr, app_port, "in", iif=pod.iface),
                         "capture", intent.inbound_port, "inbound-not-captured"))
        bypass = sorted(intent.inbound_excluded) if intent.inbound_included is None else []
        for port in bypass:
            out.append(Probe(f"inbound to bypassed port {port}",
                             Packet("tcp", peer, 50001, pod.addr, port, "in", iif=pod.iface),
                             "bypass", None, "bypass-captured"))
    servers = [s for s in (_net(d) for d in intent.dns_servers) if s and s.version == fam]
    # DNS capture limited to the pod's nameservers: a family without one has nothing to capture.
    if intent.dns_capture and (servers or not dns_limited):
        server = servers[0][0] if servers else ipaddress.ip_address(DNS_SERVER[fam])
        for proto in ("udp", "tcp"):
            out.append(Probe(f"DNS over {proto.upper()} from an app uid",
                             Packet(proto, pod.addr, 40053, server, 53, "out", uid=app, gid=app, oif=pod.iface),
                             "capture", DNS_PROXY_PORT, "dns-not-captured"))
    return out


def verdict_ok(probe: Probe, ex: Explanation) -> bool | None:
    """True/False, None when explain could not decide (a rule it does not model)."""
    v = ex.verdict
    if v is None or v.kind == "uncertain":
        return None
    if probe.expect == "bypass":
        return v.kind == "pass"
    return v.kind in ("redirect", "tproxy") and v.port == probe.port


def _explain(ctx: Context, backend: str, packet: Packet) -> Explanation:
    if backend == NFTABLES:
        from meshnet.diagnose.explain.nft import explain_nft

        assert ctx.live.nft is not None
        return explain_nft(ctx.live.nft, packet)
    from meshnet.diagnose.explain.iptables import explain_ruleset

    return explain_ruleset(ctx.live.ruleset(backend, packet.family), packet, backend)


# ----------------------------------------------------------------- where the path broke off
_FLOWS = {  # kind -> (table, base chain, Istio entry chain, capture chain, capture action)
    "outbound-not-captured": ("nat", "output", "istio-output", "istio-redirect", "redirect"),
    "inbound-not-captured": ("nat", "prerouting", "istio-inbound", "istio-in-redirect", "redirect"),
    "inbound-not-captured/TPROXY": ("mangle", "prerouting", "istio-inbound", "istio-tproxy", "tproxy"),
}


def _show(backend: str, table: str, chain: str, rule: str) -> str:
    if backend == NFTABLES:
        return f"nft add rule inet istio-proxy-{table} {chain} {rule}"
    return f"iptables -t {table} -A {chain.upper().replace('-', '_')} {rule}"


def _xt(chain: str) -> str:
    return chain.upper().replace("-", "_")


def cause(kind: str, intent: Intent, rules: list[NRule]) -> str:
    key = f"{kind}/TPROXY" if kind == "inbound-not-captured" and intent.mode == "TPROXY" else kind
    if kind == "dns-not-captured":
        return ("the DNS REDIRECTs to :15053 (ISTIO_OUTPUT_DNS / istio-output-dns) are gone or not reached: "
                "re-apply the pod's rules with DNS capture (istio-iptables --redirect-dns)")
    if key not in _FLOWS:
        return ""
    table, base, entry, capture, action = _FLOWS[key]
    nft = intent.backend == NFTABLES
    name = (lambda c: c) if nft else _xt
    in_chain = {c: [r for r in rules if r.table == table and r.chain == c] for c in (base, entry, capture)}
    jump_at = next((i for i, r in enumerate(in_chain[base]) if r.action == "jump" and r.arg == entry), None)
    if jump_at is None:
        jump = "jump istio-output" if nft and entry == "istio-output" else \
            ("meta l4proto tcp jump istio-inbound" if nft else f"-p tcp -j {name(entry)}" if base == "prerouting"
             else f"-j {name(entry)}")
        return (f"{table} {name(base)} no longer jumps to {name(entry)}: restore it "
                f"(`{_show(intent.backend, table, base, jump)}`, ahead of any other rule)")
    ahead = [r for r in in_chain[base][:jump_at] if r.action in ("accept", "drop", "return") and not r.has("uid")
             and not r.has("gid")]
    if ahead:
        return (f"a rule ahead of the jump to {name(entry)} in {table} {name(base)} ends the walk: "
                f"`{ahead[0].text}` — delete it (or move it after the jump); it is not Istio's")
    catch_all = [r for r in in_chain[entry] if r.action == "jump" and r.arg == capture and not r.has("dport")
                 and not r.has("dst") and not r.has("oif") and not r.has("uid") and not r.has("gid")]
    if not catch_all and not (kind == "outbound-not-captured" and intent.outbound_included_cidrs):
        rule = f"jump {capture}" if nft else (f"-p tcp -j {name(capture)}" if base == "prerouting"
                                               else f"-j {name(capture)}")
        if nft and base == "prerouting":
            rule = f"meta l4proto tcp jump {capture}"
        fix = (f"the catch-all {name(entry)} -> {name(capture)} rule is gone: append it again as the chain's "
               f"last rule (`{_show(intent.backend, table, entry, rule)}`)")
        if kind == "outbound-not-captured" and not intent.outbound_included_ports:
            fix += (". These rules are also what Istio renders for includeOutboundIPRanges \"\" (-i ''): if that is "
                    "the pod's setting, outbound capture is off on purpose; run doctor with the pod's spec to check "
                    "against it")
        return fix
    if not any(r.action == action for r in in_chain[capture]):
        return f"{name(capture)} has no {action.upper()} rule: re-apply the pod's rules"
    return "the path shows the rule that ends the walk before the capture: re-apply the pod's rules"


def _bypass_fix(probe: Probe, intent: Intent) -> str:
    nft = intent.backend == NFTABLES
    if probe.packet.direction == "out":
        uid = probe.packet.uid
        rule = f"skuid {uid} return" if nft else f"-m owner --uid-owner {uid} -j RETURN"
        return (f"the proxy's own connections are captured again (a redirect loop): restore the RETURN for "
                f"uid/gid {uid} in {'istio-output' if nft else 'ISTIO_OUTPUT'} ahead of the capture "
                f"(`{_show(intent.backend, 'nat', 'istio-output', rule)}`)")
    port = probe.packet.dport
    table = "mangle" if intent.mode == "TPROXY" else "nat"
    rule = f"meta l4proto tcp tcp dport {port} return" if nft else f"-p tcp --dport {port} -j RETURN"
    return (f"port {port} must reach the pod directly: restore its RETURN at the top of "
            f"{'istio-inbound' if nft else 'ISTIO_INBOUND'} (`{_show(intent.backend, table, 'istio-inbound', rule)}`"
            ", inserted before the capture rule)")


# ----------------------------------------------------------------- the check
def run(ctx: Context) -> list[Finding]:
    if not ctx.live.istio_backends() or ctx.spec is not None:
        return []  # with a spec, drift names every missing rule exactly
    addrs = pod_addresses(ctx.netns)
    found: dict[str, Finding] = {}
    table = intents(ctx.live)
    dns_limited = any(it.dns_servers for it, _ in table.values())
    cidr_limited = any(it.outbound_included_cidrs for it, _ in table.values())
    for (backend, fam), (intent, rules) in table.items():
        pod = addrs.get(fam)
        if pod is None:
            continue  # the pod has no address of this family: nothing to probe
        if fam == 6 and backend == NFTABLES and not any(k in ("dst", "src") and ":" in v for r in rules
                                                        for k, v, _ in r.matches):
            continue
        for probe in probes(intent, fam, pod, dns_limited, cidr_limited):
            try:
                ex = _explain(ctx, backend, probe.packet)
            except (ValueError, KeyError, IndexError) as exc:  # a rule explain cannot even parse
                ctx.notes.append(f"probe '{probe.name}' ({backend} v{fam}) could not be evaluated: {exc}")
                continue
            ok = verdict_ok(probe, ex)
            if ok is None:
                ctx.notes.append(f"probe '{probe.name}' ({backend} v{fam}) is uncertain: "
                                 f"{ex.verdict.text if ex.verdict else 'no verdict'}")
                continue
            if ok:
                continue
            f = found.get(probe.kind)
            if f is None:
                f = found[probe.kind] = Finding(probe.kind, "critical", KINDS[probe.kind],
                                                [f"intent: {line}" for line in intent.lines()])
            want = f"REDIRECT/TPROXY to :{probe.port}" if probe.expect == "capture" else "not intercepted"
            f.evidence += [f"probe {backend} v{fam}: {probe.name}: {probe.packet.describe()}",
                           *(f"  path: {p}" for p in ex.paths),
                           f"  verdict: {ex.verdict.text if ex.verdict else '-'} (intended: {want})"]
            fix = _bypass_fix(probe, intent) if probe.expect == "bypass" else cause(probe.kind, intent, rules)
            if fix and fix not in f.fix:
                f.fix = f"{f.fix}; {fix}" if f.fix else fix
    if found:
        from meshnet.diagnose.checks.drift import structural_holes

        ctx.structure_explained = True  # the holes are part of these findings, not a separate one
        holes = structural_holes(ctx.live)
        first = next(iter(found.values()))
        first.evidence += [f"structural hole: {h}" for h in holes]
    return list(found.values())
