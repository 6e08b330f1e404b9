"""The conntrack entry model shared by the netlink reader and the offline text parsers."""

from __future__ import annotations

from meshnet.lite.records import dataclass

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
              "TIME_WAIT", "CLOSE", "SYN_SENT2")
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 33: "dccp"}
PROTO_NUMS = {v: k for k, v in PROTO_NAMES.items()}

# Status bits (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

GroupKey = tuple[int, str, int, str, str, int]  # CtEntry.group_key


@dataclass(slots=True)
class CtEntry:
    """One connection: original and reply tuples, as conntrack -L prints them."""

    family: int  # 4 or 6
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    rsrc: str
    rdst: str
    rsport: int
    rdport: int
    state: str = ""  # TCP state name, "" for other protocols
    unreplied: bool = False
    assured: bool = False
    timeout: int | None = None
    mark: int = 0
    zone: int = 0
    id: int | None = None
    status: int | None = None  # raw status bits when known (netlink only)
    start_ns: int | None = None  # CTA_TIMESTAMP start, when nf_conntrack_timestamp is on
    extra: dict[str, str] | None = None  # unparsed key=value fields of offline formats

    @property
    def group_key(self) -> GroupKey:
        """(proto, client ip, client port, original dst ip, capture ip, capture port): the entries
        of one group differ only in the original destination port, and compete for one reply tuple."""
        return (self.proto, self.src, self.sport, self.dst, self.rsrc, self.rsport)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def dst_rewritten(self) -> bool:
        """Destination NAT (REDIRECT/DNAT): the reply comes from somewhere else than the original dst."""
        return self.rsrc != self.dst or self.rsport != self.dport

    @property
    def src_rewritten(self) -> bool:
        """Source NAT, explicit (SNAT/MASQUERADE) or the kernel's implicit clash remap."""
        return self.rdst != self.src or self.rdport != self.sport

    def line(self) -> str:
        """conntrack -L style text, used as evidence in reports."""
        parts = [self.proto_name, str(self.proto)]
        if self.timeout is not None:
            parts.append(str(self.timeout))
        if self.state:
            parts.append(self.state)
        parts += [f"src={self.src}", f"dst={self.dst}", f"sport={self.sport}", f"dport={self.dport}"]
        if self.unreplied:
            parts.append("[UNREPLIED]")
        parts += [f"src={self.rsrc}", f"dst={self.rdst}", f"sport={self.rsport}", f"dport={self.rdport}"]
        if self.assured:
            parts.append("[ASSURED]")
        if self.mark:
            parts.append(f"mark={self.mark}")
        if self.zone:
            parts.append(f"zone={self.zone}")
        return " ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "proto": self.proto_name, "state": self.state or None,
            "orig": {"src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport},
            "reply": {"src": self.rsrc, "dst": self.rdst, "sport": self.rsport, "dport": self.rdport},
            "unreplied": self.unreplied, "assured": self.assured, "timeout": self.timeout,
            "mark": self.mark, "zone": self.zone, "line": self.line(),
        }
