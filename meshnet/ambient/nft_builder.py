"""AmbientSpec -> NftPlan, in the order and spelling of istio-cni's NftablesConfigurator.

Istio writes these rules by hand (not translated from the iptables ones), including two
spellings of the mark match and a double space in a few rules; they are kept byte for byte.
"""

from __future__ import annotations

from meshnet.ambient import spec as c
from meshnet.ambient.spec import AmbientSpec
from meshnet.plan.nft_builder import nft_iface
from meshnet.plan.nft_model import NftOp, NftPlan, NftRule

NAT, MANGLE, RAW = "nat", "mangle", "raw"
PRERT, OUTPUT = "istio-prerouting", "istio-output"
L4TCP = "meta l4proto tcp"
LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
IP = {4: "ip", 6: "ip6"}
MASK, MARK = f"0x{c.ZTUNNEL_MASK:x}", f"0x{c.ZTUNNEL_MARK:x}"
TPROXY_MASK, TPROXY_MARK = f"0x{c.TPROXY_MASK:x}", f"0x{c.TPROXY_MARK:x}"


class _Emitter:
    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.plan = NftPlan(layout="ambient")

    def add(self, table: str, chain: str, matches: tuple[str, ...], *action: str, family: int | None = None,
            counter: bool = True) -> None:
        if family == 6 and not self.ipv6:
            return  # Istio's AppendV6RuleIfSupported
        self.plan.ops.append(NftOp(NftRule(table, chain, matches, tuple(action), family, counter)))

    def jump(self, table: str, chain: str, target: str) -> None:
        self.add(table, chain, (), f"jump {target}", counter=False)


def build_inpod_nft(spec: AmbientSpec) -> NftPlan:
    e = _Emitter(spec.enable_ipv6)
    dns = spec.dns_effective
    snat = {4: spec.host_probe_snat, 6: spec.host_probe_snat_v6}
    not_ztunnel = f"mark and {MASK} != {MARK}"

    e.jump(MANGLE, "prerouting", PRERT)
    e.jump(MANGLE, "output", OUTPUT)
    e.jump(NAT, "output", OUTPUT)
    if dns:
        e.jump(RAW, "prerouting", PRERT)
        e.jump(RAW, "output", OUTPUT)
    e.jump(NAT, "prerouting", PRERT)
    for nic in spec.virtual_interfaces:
        name = nft_iface(nic)
        e.add(NAT, PRERT, (f"iifname {name}", L4TCP), f"redirect to :{c.OUTBOUND_PORT}")
        e.add(NAT, PRERT, (f"iifname {name}", L4TCP), "return")
    e.add(MANGLE, PRERT, (f"meta mark & {MASK} == {MARK}",), f"ct mark set ct mark & 0xfffff000 |  {TPROXY_MARK}")
    if not spec.ingress_mode:
        for fam in (4, 6):
            e.add(NAT, PRERT, (L4TCP, f"{IP[fam]} saddr {snat[fam]}"), "accept", family=fam)
    for fam in (4, 6):
        e.add(NAT, OUTPUT, (L4TCP, f"{IP[fam]} daddr {snat[fam]}"), "accept", family=fam)
    if not spec.ingress_mode:
        # Istio's v4 rule has "0xfff " followed by " !=": two spaces.
        for fam, mark_match in ((4, f"mark and {MASK}  != {MARK}"), (6, not_ztunnel)):
            e.add(NAT, PRERT, (f"{IP[fam]} daddr != {LOOPBACK[fam]}", f"tcp dport != {c.INBOUND_HBONE_PORT}",
                               mark_match), f"redirect to :{c.INBOUND_PLAINTEXT_PORT}", family=fam)
    e.add(MANGLE, OUTPUT, (f"ct mark and {TPROXY_MASK} == {TPROXY_MARK}",), "meta mark set ct mark")
    if dns:
        e.add(NAT, OUTPUT, ("oifname != lo", not_ztunnel, "udp dport 53"), f"redirect to :{c.DNS_PORT}")
        for fam in (4, 6):
            e.add(NAT, OUTPUT, (f"{IP[fam]} daddr != {LOOPBACK[fam]}", "tcp dport 53", not_ztunnel),
                  f"redirect to :{c.DNS_PORT}", family=fam)
        e.add(RAW, OUTPUT, ("udp dport 53", f"meta mark and {MASK} == {MARK}"), f"ct zone set {c.DNS_CT_ZONE}")
        e.add(RAW, PRERT, ("udp sport 53", f"meta mark and {MASK} != {MARK}"), f"ct zone set {c.DNS_CT_ZONE}")
    e.add(NAT, OUTPUT, (L4TCP, f"mark and {TPROXY_MASK} == {TPROXY_MARK}"), "accept")
    for fam in (4, 6):
        e.add(NAT, OUTPUT, ("oifname lo", f"{IP[fam]} daddr != {LOOPBACK[fam]}"), "accept", family=fam)
    for fam in (4, 6):
        e.add(NAT, OUTPUT, (L4TCP, f"{IP[fam]} daddr != {LOOPBACK[fam]}", not_ztunnel),
              f"redirect to :{c.OUTBOUND_PORT}", family=fam)
    return e.plan


def build_host_nft(spec: AmbientSpec) -> NftPlan:
    """kubelet's packets to enrolled pods get the probe source (sets filled per pod by the agent)."""
    if not spec.kubelet_uid:
        from meshnet.errors import SpecError

        raise SpecError("kubelet_uid", "", "the nft host rules match kubelet's uid: give --kubelet-uid")
    e = _Emitter(spec.enable_ipv6)
    for fam, addr in ((4, spec.host_probe_snat), (6, spec.host_probe_snat_v6)):
        e.add(NAT, "postrouting", (L4TCP, f"skuid {spec.kubelet_uid}", f"{IP[fam]} daddr @{c.PROBE_IPSET}-v{fam}"),
              f"snat to {addr}", family=fam)
    return e.plan
