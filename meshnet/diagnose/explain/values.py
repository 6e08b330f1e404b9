"""Evaluating one match value against a packet: the helpers both rule families share.

Three-valued: a helper returns True/False, or raises Uncertain when the packet does not say (an
interface or socket owner not given, an unknown user name). The iptables match kinds call these
from their entries in meshnet.plan.match_kinds; the nft family calls them from explain.nft.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd


class Uncertain(Exception):
    """A match or target explain does not evaluate, or a fact the packet lacks: the verdict cannot be known."""


def owner_matches(value: str, have: int | None, kind: str) -> bool:
    if have is None:
        raise Uncertain(f"rule matches the socket {kind}, but the packet has none given")
    lo, sep, hi = value.partition("-")
    try:
        ids = [int(x) if x.isdigit() else _name_id(x, kind) for x in ((lo, hi) if sep else (lo,))]
    except KeyError:
        raise Uncertain(f"unknown {kind} name {value!r}") from None
    return ids[0] <= have <= ids[-1]


def _name_id(name: str, kind: str) -> int:
    return pwd.getpwnam(name).pw_uid if kind == "uid" else grp.getgrnam(name).gr_gid


def in_port_list(value: str, port: int, sep_range: str) -> bool:
    """'80', '80:90' (iptables) or '80-90' (nft), comma separated lists too."""
    for item in value.replace(" ", "").strip("{}").split(","):
        lo, sep, hi = item.partition(sep_range)
        if sep and int(lo) <= port <= int(hi) or not sep and int(lo) == port:
            return True
    return False


def in_cidr(value: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool | None:
    """None when the address family differs (the match does not apply)."""
    net = ipaddress.ip_network(value, strict=False)
    if net.version != addr.version:
        return None
    return addr in net


def mark_matches(value: str, have: int) -> bool:
    val, sep, mask = value.partition("/")
    m = int(mask, 0) if sep else 0xFFFFFFFF
    return have & m == int(val, 0) & m


def iface_matches(pattern: str, have: str | None) -> bool:
    if have is None:
        raise Uncertain("the interface is unknown (give iface=/oif=)")
    pattern = pattern.strip('"')
    if pattern.endswith(("+", "*")):
        return have.startswith(pattern[:-1])
    return have == pattern
