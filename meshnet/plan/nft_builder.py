"""Spec -> NftPlan in the order and spelling of Istio's native nftables backend (`--native-nftables`)."""

from __future__ import annotations

import re
from collections.abc import Callable

from meshnet.plan.nft_model import NftOp, NftPlan, NftRule
from meshnet.spec.spec import Spec, cidrs_v4, cidrs_v6, has_loopback

NAT, MANGLE, RAW = "nat", "mangle", "raw"
IP = {4: "ip", 6: "ip6"}
PASSTHROUGH = {4: "127.0.0.6/32", 6: "::6/128"}
L4TCP = "meta l4proto tcp"
OUTBOUND_MARK = 1338
VersionedMatches = Callable[[int], tuple[str, ...]]
_PLAIN_IFACE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_DIGIT_KEYWORDS = frozenset({"ip6", "icmpv6", "ip6ext", "ipv4", "ipv6", "inet6", "u32", "s32"})


def nft_iface(name: str) -> str:
    """An interface name as nft can read it.

    Istio writes names bare (`iifname eth0`), which nft mis-parses when the name is a keyword
    (`iifname ct`). Bare words with a digit or a dash cannot be keywords (bar a few listed), so
    they stay bare and Istio's output is kept byte for byte; anything else is quoted. The
    iptables wildcard `eth+` is nft's `"eth*"`.
    """
    if name.endswith("+"):
        return f'"{name[:-1]}*"'
    if name == "lo" or (_PLAIN_IFACE.match(name) and re.search(r"[0-9-]", name) and name not in _DIGIT_KEYWORDS):
        return name
    return f'"{name}"'


class _Emitter:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.plan = NftPlan()

    def add(self, table: str, chain: str, matches: tuple[str, ...], *action: str, family: int | None = None,
            index: int | None = None) -> None:
        if family == 6 and not self.ipv6:
            return
        self.plan.ops.append(NftOp(NftRule(table, chain, matches, tuple(action), family), index))

    def versioned(self, table: str, chain: str, matches: VersionedMatches, *action: str,
                  index: int | None = None) -> None:
        """One rule per address family, v4 first (one inet table holds both)."""
        for fam in (4, 6):
            self.add(table, chain, matches(fam), *action, family=fam, index=index)


def _owned_on_lo(lo: dict[int, str], *owner_matches: str) -> VersionedMatches:
    """Per family: TCP on lo to a non-loopback address, then `owner_matches` (one closure per owner)."""
    return lambda f: ("oifname lo", L4TCP, f"{IP[f]} daddr != {lo[f]}", *owner_matches)


def build_nft(spec: Spec) -> NftPlan:
    e = _Emitter(spec.enable_ipv6)
    lo: dict[int, str] = {4: spec.ipv4_loopback_cidr, 6: "::1/128"}
    dns = spec.dns_effective
    mark = str(spec.tproxy_mark)

    for nic in spec.exclude_interfaces:
        e.add(NAT, "prerouting", (f"iifname {nft_iface(nic)}",), "return")
        e.add(NAT, "output", (f"oifname {nft_iface(nic)}",), "return")
    if spec.tproxy:
        for nic in spec.exclude_interfaces:
            e.add(MANGLE, "prerouting", (f"iifname {nft_iface(nic)}",), "return")
            e.add(MANGLE, "output", (f"oifname {nft_iface(nic)}",), "return")
    for nic in spec.kube_virt_interfaces:
        e.add(NAT, "prerouting", (f"iifname {nft_iface(nic)}",), "return", index=0)
    if spec.drop_invalid:
        e.add(MANGLE, "prerouting", (L4TCP, "ct state invalid"), "jump istio-drop")
        e.add(MANGLE, "istio-drop", (), "drop")

    e.add(NAT, "istio-inbound", (L4TCP, f"tcp dport {spec.inbound_tunnel_port}"), "return")
    e.add(NAT, "istio-redirect", (L4TCP,), f"redirect to :{spec.proxy_port}")
    e.add(NAT, "istio-in-redirect", (L4TCP,), f"redirect to :{spec.inbound_capture_port}")

    if spec.inbound_enabled:
        table = MANGLE if spec.tproxy else NAT
        if spec.tproxy:
            e.add(MANGLE, "istio-divert", (), f"meta mark set {mark}")
            e.add(MANGLE, "istio-divert", (), "accept")
            e.versioned(MANGLE, "istio-tproxy",
                        lambda f: (L4TCP, f"{IP[f]} daddr != {lo[f]}",
                                   f"tproxy {IP[f]} to :{spec.inbound_capture_port}", f"meta mark set {mark}"),
                        "accept")
        e.add(table, "prerouting", (L4TCP,), "jump istio-inbound")
        established = "ct state related,established"
        if spec.inbound_ports_wildcard:
            for port in spec.inbound_exclude_ports:
                e.add(table, "istio-inbound", (L4TCP, f"tcp dport {port}"), "return")
            if spec.tproxy:
                e.add(MANGLE, "istio-inbound", (L4TCP, established), "jump istio-divert")
                e.add(MANGLE, "istio-inbound", (L4TCP,), "jump istio-tproxy")
            else:
                e.add(NAT, "istio-inbound", (L4TCP,), "jump istio-in-redirect")
        else:
            for port in spec.inbound_ports:
                if spec.tproxy:
                    e.add(MANGLE, "istio-inbound", (L4TCP, established, f"tcp dport {port}"), "jump istio-divert")
                    e.add(MANGLE, "istio-inbound", (L4TCP, f"tcp dport {port}"), "jump istio-tproxy")
                else:
                    e.add(NAT, "istio-inbound", (L4TCP, f"tcp dport {port}"), "jump istio-in-redirect")

    e.add(NAT, "output", (), "jump istio-output")
    for port in spec.outbound_exclude_ports:
        e.add(NAT, "istio-output", (L4TCP, f"tcp dport {port}"), "return")
        e.add(NAT, "istio-output", ("meta l4proto udp", f"udp dport {port}"), "return")
    e.versioned(NAT, "istio-output", lambda f: ("oifname lo", f"{IP[f]} saddr {PASSTHROUGH[f]}"), "return")
    loopback_included = has_loopback(spec.outbound_include_cidrs)
    tunnel = spec.inbound_tunnel_port
    for sk, owners in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for owner in owners:
            ports = f"tcp dport != {{ 53, {tunnel} }}" if dns and sk == "skuid" else f"tcp dport != {tunnel}"
            e.versioned(NAT, "istio-output", _owned_on_lo(lo, ports, f"{sk} {owner}"), "jump istio-in-redirect")
            if not loopback_included:
                if dns:
                    e.add(NAT, "istio-output", ("oifname lo", L4TCP, "tcp dport != 53", f"{sk} != {owner}"), "return")
                else:
                    e.add(NAT, "istio-output", ("oifname lo", f"{sk} != {owner}"), "return")
            e.add(NAT, "istio-output", (f"{sk} {owner}",), "return")
    if spec.owner_groups_include is None:
        for group in spec.owner_groups_exclude:
            e.add(NAT, "istio-output", (f"skgid {group}",), "return")
    else:
        e.add(NAT, "istio-output", tuple(f"skgid != {g}" for g in spec.owner_groups_include), "return")
    if dns:
        _dns(e, spec)
    e.versioned(NAT, "istio-output", lambda f: (f"{IP[f]} daddr {lo[f]}",), "return")
    for fam, cidrs in ((4, cidrs_v4(spec.outbound_exclude_cidrs)), (6, cidrs_v6(spec.outbound_exclude_cidrs))):
        for cidr in cidrs:
            e.add(NAT, "istio-output", (f"{IP[fam]} daddr {cidr}",), "return", family=fam)
    for port in spec.outbound_include_ports:
        e.add(NAT, "istio-output", (f"tcp dport {port}",), "jump istio-redirect")
    if spec.outbound_cidrs_wildcard:
        e.add(NAT, "istio-output", (), "jump istio-redirect")
        for nic in spec.kube_virt_interfaces:
            e.add(NAT, "prerouting", (f"iifname {nft_iface(nic)}",), "jump istio-redirect", index=0)
    else:
        for fam, cidrs in ((4, cidrs_v4(spec.outbound_include_cidrs)), (6, cidrs_v6(spec.outbound_include_cidrs))):
            for cidr in cidrs:
                for nic in spec.kube_virt_interfaces:
                    e.add(NAT, "prerouting", (f"iifname {nft_iface(nic)}", f"{IP[fam]} daddr {cidr}"),
                          "jump istio-redirect", family=fam, index=0)
                e.add(NAT, "istio-output", (f"{IP[fam]} daddr {cidr}",), "jump istio-redirect", family=fam)

    if spec.tproxy:
        e.add(MANGLE, "prerouting", (L4TCP, f"mark {mark}"), "ct mark set mark")
        e.add(MANGLE, "output", ("oifname lo", L4TCP, f"mark {mark}"), "return")
        for sk, owners in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
            for owner in owners:
                e.versioned(MANGLE, "output", _owned_on_lo(lo, f"{sk} {owner}"), f"meta mark set {OUTBOUND_MARK}")
        e.add(MANGLE, "output", (L4TCP, f"ct mark {mark}"), "meta mark set ct mark")
        e.add(MANGLE, "istio-inbound", (L4TCP, f"mark {mark}"), "return", index=0)
        e.versioned(MANGLE, "istio-inbound", lambda f: ("iifname lo", L4TCP, f"{IP[f]} saddr {PASSTHROUGH[f]}"),
                    "return", index=1)
        e.add(MANGLE, "istio-inbound", ("iifname lo", L4TCP, f"mark != {OUTBOUND_MARK}"), "return", index=2)
    return e.plan


def _dns(e: _Emitter, spec: Spec) -> None:
    servers = {4: spec.dns_servers_v4, 6: spec.dns_servers_v6 if spec.enable_ipv6 else ()}
    plen = {4: "/32", 6: "/128"}
    any_servers = spec.capture_all_dns or bool(servers[4]) or bool(servers[6])
    if any_servers:
        e.add(NAT, "istio-output", (), "jump istio-output-dns")
    if spec.capture_all_dns:
        e.add(NAT, "istio-output-dns", ("tcp dport 53",), "redirect to :15053")
        e.add(NAT, "istio-output-dns", ("udp dport 53",), "redirect to :15053")
    else:
        for proto in ("tcp", "udp"):
            for fam in (4, 6):
                for server in servers[fam]:
                    e.add(NAT, "istio-output-dns", (f"{IP[fam]} daddr {server}{plen[fam]}", f"{proto} dport 53"),
                          "redirect to :15053", family=fam)
    e.add(RAW, "output", (), "jump istio-output-dns")
    for sk, owners in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for owner in owners:
            e.add(RAW, "istio-output-dns", ("udp dport 53", f"meta {sk} {owner}"), "ct zone set 1")
            e.add(RAW, "istio-output-dns", ("udp sport 15053", f"meta {sk} {owner}"), "ct zone set 2")
    if any_servers:
        e.add(RAW, "prerouting", (), "jump istio-inbound")
    if spec.capture_all_dns:
        e.add(RAW, "istio-output-dns", ("udp dport 53",), "ct zone set 2")
        e.add(RAW, "istio-inbound", ("udp sport 53",), "ct zone set 1")
    else:
        for fam in (4, 6):
            for server in servers[fam]:
                addr = f"{server}{plen[fam]}"
                e.add(RAW, "istio-output-dns", ("udp dport 53", f"{IP[fam]} daddr {addr}"), "ct zone set 2",
                      family=fam)
                e.add(RAW, "istio-inbound", ("udp sport 53", f"{IP[fam]} saddr {addr}"), "ct zone set 1",
                      family=fam)
