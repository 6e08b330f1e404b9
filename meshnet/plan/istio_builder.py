"""Spec -> IptablesPlan, in the exact order Istio's istio-iptables emits rules (run.go `Run()`).

This is the only Istio-specific part of the iptables side: another mesh's layout would be a
second builder producing the same model.
"""

from __future__ import annotations

from meshnet.plan.model import Family, IptablesPlan, Match, Op, Rule, Target
from meshnet.spec.spec import Spec, cidrs_v4, cidrs_v6, has_loopback

TYPE_CHECKING = False  # collections.abc/typing imports cost ms at pod start: type checkers only
if TYPE_CHECKING:
    from collections.abc import Callable

    Versioned = Callable[[Family], tuple[Match, ...]]

NAT, MANGLE, RAW = "nat", "mangle", "raw"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_DROP = "ISTIO_DROP"
OUTBOUND_MARK = 1338
DNS_PORT = "53"
DNS_LISTENER_PORT = "15053"
INBOUND_PASSTHROUGH = {4: "127.0.0.6/32", 6: "::6/128"}
FAMILIES: tuple[Family, ...] = (4, 6)

M = Match


def j(name: str, *args: str) -> Target:
    return Target(name, tuple(args))


class _Emitter:
    """Collects operations per family; `both` rules go to v6 too only when IPv6 is on."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.ops: dict[Family, list[Op]] = {4: [], 6: []}

    def _families(self, family: Family | None) -> tuple[Family, ...]:
        if family is None:
            return (4, 6) if self.ipv6 else (4,)
        if family == 6 and not self.ipv6:
            return ()
        return (family,)

    def append(self, table: str, chain: str, matches: tuple[Match, ...] | Versioned, target: Target,
               family: Family | None = None) -> None:
        self._emit(table, chain, matches, target, family, None)

    def insert(self, table: str, chain: str, position: int, matches: tuple[Match, ...] | Versioned,
               target: Target, family: Family | None = None) -> None:
        self._emit(table, chain, matches, target, family, position)

    def _emit(self, table: str, chain: str, matches: tuple[Match, ...] | Versioned, target: Target,
              family: Family | None, position: int | None) -> None:
        for fam in self._families(family):
            ms = matches(fam) if callable(matches) else matches
            self.ops[fam].append(Op(Rule(table, chain, ms, target), position))


def build_iptables(spec: Spec) -> IptablesPlan:
    e = _Emitter(spec.enable_ipv6)
    loopback: dict[Family, str] = {4: spec.ipv4_loopback_cidr, 6: "::1/128"}
    tcp = M("proto", "tcp")
    v4_excl, v6_excl = cidrs_v4(spec.outbound_exclude_cidrs), cidrs_v6(spec.outbound_exclude_cidrs)
    v4_incl, v6_incl = cidrs_v4(spec.outbound_include_cidrs), cidrs_v6(spec.outbound_include_cidrs)
    dns = spec.dns_effective

    # 1. Excluded interfaces bypass both ways (and the mangle table too under TPROXY).
    for nic in spec.exclude_interfaces:
        e.append(NAT, "PREROUTING", (M("in", nic),), j("RETURN"))
        e.append(NAT, "OUTPUT", (M("out", nic),), j("RETURN"))
    if spec.tproxy:
        for nic in spec.exclude_interfaces:
            e.append(MANGLE, "PREROUTING", (M("in", nic),), j("RETURN"))
            e.append(MANGLE, "OUTPUT", (M("out", nic),), j("RETURN"))
    # 2. Virtual interfaces: inbound traffic is not treated as inbound.
    for nic in spec.kube_virt_interfaces:
        e.insert(NAT, "PREROUTING", 1, (M("in", nic),), j("RETURN"))
    # 3. Drop packets conntrack considers INVALID (Istio #36566).
    if spec.drop_invalid:
        e.append(MANGLE, "PREROUTING", (M("ctstate", "INVALID"),), j(ISTIO_DROP))
        e.append(MANGLE, ISTIO_DROP, (), j("DROP"))
    # 4. Fixed chains.
    e.append(NAT, ISTIO_INBOUND, (tcp, M("dport", str(spec.inbound_tunnel_port))), j("RETURN"))
    e.append(NAT, ISTIO_REDIRECT, (tcp,), j("REDIRECT", "--to-ports", str(spec.proxy_port)))
    e.append(NAT, ISTIO_IN_REDIRECT, (tcp,), j("REDIRECT", "--to-ports", str(spec.inbound_capture_port)))
    # 5. Inbound capture.
    if spec.inbound_enabled:
        _inbound(e, spec, loopback)
    # 6-9. Outbound: everything sent by the pod enters ISTIO_OUTPUT (UDP too).
    e.append(NAT, "OUTPUT", (), j(ISTIO_OUTPUT))
    for port in spec.outbound_exclude_ports:
        e.append(NAT, ISTIO_OUTPUT, (tcp, M("dport", str(port))), j("RETURN"))
        e.append(NAT, ISTIO_OUTPUT, (M("proto", "udp"), M("dport", str(port))), j("RETURN"))
    e.append(NAT, ISTIO_OUTPUT, lambda f: (M("out", "lo"), M("src", INBOUND_PASSTHROUGH[f])), j("RETURN"))
    loopback_included = has_loopback(tuple(v4_incl)) or has_loopback(tuple(v6_incl))
    for kind, owners in (("uid", spec.proxy_uids), ("gid", spec.proxy_gids)):
        for owner in owners:
            _owner_rules(e, spec, kind, owner, loopback, dns, loopback_included)
    # 10. Owner groups filter.
    if spec.owner_groups_include is None:
        for group in spec.owner_groups_exclude:
            e.append(NAT, ISTIO_OUTPUT, (M("gid", group),), j("RETURN"))
    else:
        e.append(NAT, ISTIO_OUTPUT, tuple(M("gid", g, negated=True) for g in spec.owner_groups_include),
                 j("RETURN"))
    # 11. DNS capture.
    if dns:
        _dns(e, spec)
    # 12. Loopback and excluded destinations return.
    e.append(NAT, ISTIO_OUTPUT, lambda f: (M("dst", loopback[f]),), j("RETURN"))
    for cidr in v4_excl:
        e.append(NAT, ISTIO_OUTPUT, (M("dst", cidr),), j("RETURN"), family=4)
    for cidr in v6_excl:
        e.append(NAT, ISTIO_OUTPUT, (M("dst", cidr),), j("RETURN"), family=6)
    # 13. Outbound ports always redirected.
    for port in spec.outbound_include_ports:
        e.append(NAT, ISTIO_OUTPUT, (tcp, M("dport", str(port))), j(ISTIO_REDIRECT))
    # 14. Outbound destinations redirected.
    if spec.outbound_cidrs_wildcard:
        e.append(NAT, ISTIO_OUTPUT, (), j(ISTIO_REDIRECT))
        for nic in spec.kube_virt_interfaces:
            e.insert(NAT, "PREROUTING", 1, (M("in", nic),), j(ISTIO_REDIRECT))
    else:
        included: dict[Family, list[str]] = {4: v4_incl, 6: v6_incl}
        for family, cidrs in included.items():
            for cidr in cidrs:
                for nic in spec.kube_virt_interfaces:
                    e.insert(NAT, "PREROUTING", 1, (M("in", nic), M("dst", cidr)), j(ISTIO_REDIRECT),
                             family=family)
                e.append(NAT, ISTIO_OUTPUT, (M("dst", cidr),), j(ISTIO_REDIRECT),
                         family=family)
    # 15. TPROXY plumbing: marks so replies from the proxy route back through lo.
    if spec.tproxy:
        _tproxy_tail(e, spec, loopback)
    return IptablesPlan(tuple(e.ops[4]), tuple(e.ops[6]), spec.enable_ipv6)


def _inbound(e: _Emitter, spec: Spec, loopback: dict[Family, str]) -> None:
    tcp = M("proto", "tcp")
    mark = str(spec.tproxy_mark)
    table = MANGLE if spec.tproxy else NAT
    if spec.tproxy:
        e.append(MANGLE, ISTIO_DIVERT, (), j("MARK", "--set-mark", mark))
        e.append(MANGLE, ISTIO_DIVERT, (), j("ACCEPT"))
        e.append(MANGLE, ISTIO_TPROXY, lambda f: (M("dst", loopback[f], negated=True), tcp),
                 j("TPROXY", "--tproxy-mark", f"{mark}/0xffffffff", "--on-port", str(spec.inbound_capture_port)))
    e.append(table, "PREROUTING", (tcp,), j(ISTIO_INBOUND))
    established = M("ctstate", "RELATED,ESTABLISHED")
    if spec.inbound_ports_wildcard:
        for port in spec.inbound_exclude_ports:
            e.append(table, ISTIO_INBOUND, (tcp, M("dport", str(port))), j("RETURN"))
        if spec.tproxy:
            e.append(MANGLE, ISTIO_INBOUND, (tcp, established), j(ISTIO_DIVERT))
            e.append(MANGLE, ISTIO_INBOUND, (tcp,), j(ISTIO_TPROXY))
        else:
            e.append(NAT, ISTIO_INBOUND, (tcp,), j(ISTIO_IN_REDIRECT))
    else:
        for port in spec.inbound_ports:
            dport = M("dport", str(port))
            if spec.tproxy:
                e.append(MANGLE, ISTIO_INBOUND, (tcp, dport, established), j(ISTIO_DIVERT))
                e.append(MANGLE, ISTIO_INBOUND, (tcp, dport), j(ISTIO_TPROXY))
            else:
                e.append(NAT, ISTIO_INBOUND, (tcp, dport), j(ISTIO_IN_REDIRECT))


def _owner_rules(e: _Emitter, spec: Spec, kind: str, owner: str, loopback: dict[Family, str], dns: bool,
                 loopback_included: bool) -> None:
    tunnel = str(spec.inbound_tunnel_port)
    tcp = M("proto", "tcp")
    # Istio uses the multiport form only for uids; the gid rule always skips just the tunnel port.
    if dns and kind == "uid":
        port_match = M("dports", f"{DNS_PORT},{tunnel}", negated=True)
    else:
        port_match = M("dport", tunnel, negated=True)
    # The proxy calling its own pod through a service VIP goes back to inbound capture.
    e.append(NAT, ISTIO_OUTPUT,
             lambda f: (M("out", "lo"), M("dst", loopback[f], negated=True), tcp, port_match, M(kind, owner)),
             j(ISTIO_IN_REDIRECT))
    # App talking to itself over lo is left alone, unless loopback is explicitly captured.
    if not loopback_included:
        if dns:
            e.append(NAT, ISTIO_OUTPUT,
                     (M("out", "lo"), tcp, M("dport", DNS_PORT, negated=True), M(kind, owner, negated=True)),
                     j("RETURN"))
        else:
            e.append(NAT, ISTIO_OUTPUT, (M("out", "lo"), M(kind, owner, negated=True)), j("RETURN"))
    # Everything else the proxy sends bypasses capture (avoids loops, UDP included).
    e.append(NAT, ISTIO_OUTPUT, (M(kind, owner),), j("RETURN"))


def _dns(e: _Emitter, spec: Spec) -> None:
    udp, tcp = M("proto", "udp"), M("proto", "tcp")
    all_dns = spec.capture_all_dns
    servers: dict[Family, tuple[str, ...]] = {4: spec.dns_servers_v4, 6: spec.dns_servers_v6}
    plen: dict[Family, str] = {4: "/32", 6: "/128"}
    for fam in FAMILIES:
        if all_dns or servers[fam]:
            e.append(NAT, ISTIO_OUTPUT, (), j(ISTIO_OUTPUT_DNS), family=fam)
    dport = M("dport", DNS_PORT)
    if all_dns:
        e.append(NAT, ISTIO_OUTPUT_DNS, (tcp, dport), j("REDIRECT", "--to-ports", DNS_LISTENER_PORT))
        e.append(NAT, ISTIO_OUTPUT_DNS, (udp, dport), j("REDIRECT", "--to-port", DNS_LISTENER_PORT))
    else:
        for proto, to in ((tcp, "--to-ports"), (udp, "--to-port")):
            for fam in FAMILIES:
                for server in servers[fam]:
                    e.append(NAT, ISTIO_OUTPUT_DNS, (proto, dport, M("dst", server + plen[fam])),
                             j("REDIRECT", to, DNS_LISTENER_PORT), family=fam)
    # Conntrack zones keep the app->agent and agent->upstream flows apart (Istio #33469).
    e.append(RAW, "OUTPUT", (), j(ISTIO_OUTPUT_DNS))
    for kind, owners in (("uid", spec.proxy_uids), ("gid", spec.proxy_gids)):
        for owner in owners:
            e.append(RAW, ISTIO_OUTPUT_DNS, (udp, dport, M(kind, owner)), j("CT", "--zone", "1"))
            e.append(RAW, ISTIO_OUTPUT_DNS, (udp, M("sport", DNS_LISTENER_PORT), M(kind, owner)),
                     j("CT", "--zone", "2"))
    for fam in FAMILIES:
        if all_dns or servers[fam]:
            e.append(RAW, "PREROUTING", (), j(ISTIO_INBOUND), family=fam)
    if all_dns:
        e.append(RAW, ISTIO_OUTPUT_DNS, (udp, dport), j("CT", "--zone", "2"))
        e.append(RAW, ISTIO_INBOUND, (udp, M("sport", DNS_PORT)), j("CT", "--zone", "1"))
    else:
        for fam in FAMILIES:
            for server in servers[fam]:
                addr = server + plen[fam]
                e.append(RAW, ISTIO_OUTPUT_DNS, (udp, dport, M("dst", addr)), j("CT", "--zone", "2"),
                         family=fam)
                e.append(RAW, ISTIO_INBOUND, (udp, M("sport", DNS_PORT), M("src", addr)), j("CT", "--zone", "1"),
                         family=fam)


def _proxy_owned_on_lo(loopback: dict[Family, str], tcp: Match, kind: str, owner: str) -> Versioned:
    """Per family: the proxy's own traffic on lo to a non-loopback address (one closure per owner)."""
    return lambda f: (M("dst", loopback[f], negated=True), tcp, M("out", "lo"), M(kind, owner))


def _tproxy_tail(e: _Emitter, spec: Spec, loopback: dict[Family, str]) -> None:
    tcp = M("proto", "tcp")
    mark = str(spec.tproxy_mark)
    e.append(MANGLE, "PREROUTING", (tcp, M("mark", mark)), j("CONNMARK", "--save-mark"))
    # Replies from the proxy to the original client must not be captured again.
    e.append(MANGLE, "OUTPUT", (tcp, M("out", "lo"), M("mark", mark)), j("RETURN"))
    for kind, owners in (("uid", spec.proxy_uids), ("gid", spec.proxy_gids)):
        for owner in owners:
            e.append(MANGLE, "OUTPUT", _proxy_owned_on_lo(loopback, tcp, kind, owner),
                     j("MARK", "--set-mark", str(OUTBOUND_MARK)))
    e.append(MANGLE, "OUTPUT", (tcp, M("connmark", mark)), j("CONNMARK", "--restore-mark"))
    e.insert(MANGLE, ISTIO_INBOUND, 1, (tcp, M("mark", mark)), j("RETURN"))
    e.insert(MANGLE, ISTIO_INBOUND, 2, lambda f: (tcp, M("src", INBOUND_PASSTHROUGH[f]), M("in", "lo")),
             j("RETURN"))
    e.insert(MANGLE, ISTIO_INBOUND, 3, (tcp, M("in", "lo"), M("mark", str(OUTBOUND_MARK), negated=True)),
             j("RETURN"))
