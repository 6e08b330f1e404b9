"""The packet `meshnet explain` follows, and its one-line syntax.

    tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000
    tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0 state=NEW
    udp [fd00::2]:40000 -> [fd00::1]:53 out uid=1337 gid=1337 mark=0x539 ctmark=1337 oif=eth0
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from meshnet.errors import UsageError, quote
from meshnet.lite.records import asdict, dataclass, replace

STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID")
_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)$")
SYNTAX = "PROTO SRC:PORT -> DST:PORT in|out [uid=N] [gid=N] [iface=IF] [oif=IF] [state=S] [mark=N] [ctmark=N]"


@dataclass(frozen=True)
class Packet:
    proto: str
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    direction: str  # "out": locally generated; "in": arriving on `iif`
    uid: int | None = None
    gid: int | None = None
    iif: str | None = None
    oif: str | None = None
    state: str = "NEW"
    mark: int = 0
    ctmark: int = 0

    @property
    def family(self) -> Literal[4, 6]:
        return self.src.version

    def describe(self) -> str:
        def ep(a: object, p: int) -> str:
            return f"[{a}]:{p}" if self.family == 6 else f"{a}:{p}"

        out = f"{self.proto} {ep(self.src, self.sport)} -> {ep(self.dst, self.dport)} {self.direction}"
        extras = [f"{k}={v}" for k, v in (("uid", self.uid), ("gid", self.gid), ("iif", self.iif), ("oif", self.oif))
                  if v is not None]
        extras.append(f"state={self.state}")
        extras += [f"{k}={v:#x}" for k, v in (("mark", self.mark), ("ctmark", self.ctmark)) if v]
        return " ".join([out, *extras])

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["src"], d["dst"] = str(self.src), str(self.dst)
        return d


def owner_defaults(packet: Packet) -> tuple[Packet, str | None]:
    """A socket always has both ids; when one is given, take the other as equal (runAsUser ==
    runAsGroup, as for Istio's 1337:1337) and say so. Neither given stays unknown."""
    if packet.direction != "out" or (packet.uid is None) == (packet.gid is None):
        return packet, None
    if packet.gid is None:
        return replace(packet, gid=packet.uid), f"gid= not given: evaluated as gid={packet.uid} (same as uid)"
    return replace(packet, uid=packet.gid), f"uid= not given: evaluated as uid={packet.gid} (same as gid)"


def _endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    m = _ENDPOINT.match(text)
    if not m:
        raise UsageError(f"bad endpoint {quote(text)}: expected IP:PORT or [IPv6]:PORT")
    try:
        addr = ipaddress.ip_address(m["v6"] or m["v4"])
    except ValueError:
        raise UsageError(f"bad address in {quote(text)}") from None
    if m["v4"] and addr.version != 4 or m["v6"] and addr.version != 6:
        raise UsageError(f"bad endpoint {quote(text)}: IPv6 addresses go in brackets")
    port = int(m["port"]) if len(m["port"]) <= 5 else -1  # int() of 100 000 digits is a ValueError
    if not 0 <= port <= 65535:
        raise UsageError(f"bad port in {quote(text)}")
    return addr, port


def _number(key: str, value: str) -> int:
    try:
        n = int(value, 0) if len(value) <= 20 else -1
    except ValueError:
        raise UsageError(f"bad {key}={quote(value)}: expected a number") from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise UsageError(f"bad {key}={quote(value)}: out of range")
    return n


def parse_packet(text: str) -> Packet:
    words = text.replace("->", " -> ").split()
    if len(words) < 5 or words[2] != "->":
        raise UsageError(f"bad packet {quote(text)}: expected {SYNTAX}")
    proto = words[0].lower()
    if proto not in ("tcp", "udp"):
        raise UsageError(f"bad packet protocol {quote(words[0])}: tcp or udp")
    src, sport = _endpoint(words[1])
    dst, dport = _endpoint(words[3])
    if src.version != dst.version:
        raise UsageError("source and destination are of different IP families")
    direction = words[4].lower()
    if direction not in ("in", "out"):
        raise UsageError(f"bad direction {quote(words[4])}: in (arriving) or out (locally generated)")
    opts: dict[str, object] = {}
    for word in words[5:]:
        key, sep, value = word.partition("=")
        key = key.lower()
        if not sep or not value:
            raise UsageError(f"bad option {quote(word)}: expected KEY=VALUE")
        if key in ("uid", "gid"):
            opts[key] = _number(key, value)
        elif key in ("mark", "ctmark"):
            opts[key] = _number(key, value)
        elif key == "state":
            if value.upper() not in STATES:
                raise UsageError(f"bad state {quote(value)}: one of {', '.join(STATES)}")
            opts["state"] = value.upper()
        elif key in ("iface", "iif", "oif"):
            if not re.fullmatch(r"[A-Za-z0-9_.@:+-]{1,15}", value):
                raise UsageError(f"bad interface name {quote(value)}")
            # `iface` is the interface the packet arrives on (in) or leaves by (out).
            slot = {"iif": "iif", "oif": "oif"}.get(key) or ("iif" if direction == "in" else "oif")
            opts[slot] = value
        else:
            raise UsageError(f"unknown packet option {quote(key)}: expected {SYNTAX}")
    if direction == "in" and ("uid" in opts or "gid" in opts):
        raise UsageError("uid=/gid= describe a local socket: only for `out` packets")
    # ignore: each option's value has its field's type (int for uid/gid/mark/ctmark, str otherwise), set above
    return Packet(proto, src, sport, dst, dport, direction, **opts)  # type: ignore[arg-type]
