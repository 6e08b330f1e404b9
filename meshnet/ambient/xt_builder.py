"""AmbientSpec -> IptablesPlan, in the order istio-cni's IptablesConfigurator emits rules.

`build_inpod` is AppendInpodRules (the pod's namespace), `build_host` AppendHostRules (the node's).
The plan is the same model the sidecar builder produces, so restore rendering, iptables-save
parsing, diff and cleanup work on ambient pods unchanged.
"""

from __future__ import annotations

from meshnet.ambient import spec as c
from meshnet.ambient.spec import AmbientSpec
from meshnet.plan.istio_builder import _Emitter
from meshnet.plan.model import Family, IptablesPlan, Match, Target

NAT, MANGLE, RAW = "nat", "mangle", "raw"
PRERT, OUTPUT, POSTRT = "ISTIO_PRERT", "ISTIO_OUTPUT", "ISTIO_POSTRT"
LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
INPOD_MARK = f"0x{c.ZTUNNEL_MARK:x}/0x{c.ZTUNNEL_MASK:x}"
TPROXY_MARK = f"0x{c.TPROXY_MARK:x}/0x{c.TPROXY_MASK:x}"
M = Match


def j(name: str, *args: str) -> Target:
    return Target(name, tuple(args))


def build_inpod(spec: AmbientSpec) -> IptablesPlan:
    e = _Emitter(spec.enable_ipv6)
    dns = spec.dns_effective
    tcp, udp = M("proto", "tcp"), M("proto", "udp")
    snat = {4: spec.host_probe_snat, 6: spec.host_probe_snat_v6}
    not_ztunnel = M("mark", INPOD_MARK, negated=True)

    # Jumps into our own chains, so cleanup deletes a handful of rules and two chains per table.
    e.append(MANGLE, "PREROUTING", (), j(PRERT))
    e.append(MANGLE, "OUTPUT", (), j(OUTPUT))
    e.append(NAT, "OUTPUT", (), j(OUTPUT))
    if dns:
        e.append(RAW, "PREROUTING", (), j(PRERT))
        e.append(RAW, "OUTPUT", (), j(OUTPUT))
    e.append(NAT, "PREROUTING", (), j(PRERT))
    # Virtual interfaces (KubeVirt, DinD): their inbound is the pod's outbound, TCP only.
    for nic in spec.virtual_interfaces:
        e.append(NAT, PRERT, (M("in", nic), tcp), j("REDIRECT", "--to-ports", str(c.OUTBOUND_PORT)))
        e.append(NAT, PRERT, (M("in", nic), tcp), j("RETURN"))
    # Packets from ztunnel's sockets mark their connection, so replies route back through lo.
    e.append(MANGLE, PRERT, (M("mark", INPOD_MARK),), j("CONNMARK", "--set-xmark", TPROXY_MARK))
    if not spec.ingress_mode:
        # Node probes arrive SNATed to the probe address (host rules): not captured.
        e.append(NAT, PRERT, lambda f: (M("src", snat[f]), tcp, M("module", "tcp")), j("ACCEPT"))
    e.append(NAT, OUTPUT, lambda f: (M("dst", snat[f]), tcp, M("module", "tcp")), j("ACCEPT"))
    if not spec.ingress_mode:
        e.append(NAT, PRERT,
                 lambda f: (M("dst", LOOPBACK[f], negated=True), tcp,
                            M("dport", str(c.INBOUND_HBONE_PORT), negated=True), not_ztunnel),
                 j("REDIRECT", "--to-ports", str(c.INBOUND_PLAINTEXT_PORT)))
    e.append(MANGLE, OUTPUT, (M("connmark", TPROXY_MARK),),
             j("CONNMARK", "--restore-mark", "--nfmask", f"0x{c.RESTORE_MASK:x}", "--ctmask", f"0x{c.RESTORE_MASK:x}"))
    if dns:
        e.append(NAT, OUTPUT, (M("out", "lo", negated=True), udp, not_ztunnel, M("module", "udp"),
                               M("dport", "53")), j("REDIRECT", "--to-port", str(c.DNS_PORT)))
        e.append(NAT, OUTPUT, lambda f: (M("dst", LOOPBACK[f], negated=True), tcp, M("dport", "53"), not_ztunnel),
                 j("REDIRECT", "--to-ports", str(c.DNS_PORT)))
        # ztunnel's upstream DNS flows get their own conntrack zone (Istio #33469).
        zone = str(c.DNS_CT_ZONE)
        e.append(RAW, OUTPUT, (udp, M("mark", INPOD_MARK), M("module", "udp"), M("dport", "53")),
                 j("CT", "--zone", zone))
        e.append(RAW, PRERT, (udp, not_ztunnel, M("module", "udp"), M("sport", "53")), j("CT", "--zone", zone))
    e.append(NAT, OUTPUT, (tcp, M("mark", TPROXY_MARK)), j("ACCEPT"))
    # The app calling its own pod address goes out lo: not back through ztunnel.
    e.append(NAT, OUTPUT, lambda f: (M("dst", LOOPBACK[f], negated=True), M("out", "lo")), j("ACCEPT"))
    e.append(NAT, OUTPUT, lambda f: (M("dst", LOOPBACK[f], negated=True), tcp, not_ztunnel),
             j("REDIRECT", "--to-ports", str(c.OUTBOUND_PORT)))
    return IptablesPlan(tuple(e.ops[4]), tuple(e.ops[6]), spec.enable_ipv6)


def build_host(spec: AmbientSpec) -> IptablesPlan:
    """The node's probe SNAT: kubelet's (locally originated) packets to enrolled pods get the probe source."""
    e = _Emitter(spec.enable_ipv6)
    e.insert(NAT, "POSTROUTING", 1, (), j(POSTRT))
    snat: dict[Family, str] = {4: spec.host_probe_snat, 6: spec.host_probe_snat_v6}
    for fam, addr in snat.items():
        e.append(NAT, POSTRT, (M("socket_exists", ""), M("proto", "tcp"), M("set", f"{c.PROBE_IPSET}-v{fam} dst")),
                 j("SNAT", "--to-source", addr), family=fam)
    return IptablesPlan(tuple(e.ops[4]), tuple(e.ops[6]), spec.enable_ipv6)
