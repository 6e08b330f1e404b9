"""Local addresses of a namespace and Istio's IPv6 detection rule, without netlink libraries.

IPv4 local addresses come from /proc/net/fib_trie (LOCAL host routes), IPv6 from
/proc/net/if_inet6: both are per network namespace and cheap to read.
"""

from __future__ import annotations

import ipaddress

from meshnet.errors import ApplyError

TYPE_CHECKING = False  # keep `typing` off the start-up path
if TYPE_CHECKING:
    from meshnet.netns import Netns

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _read(netns: Netns | None, name: str) -> str:
    if netns is None:
        with open(f"/proc/thread-self/net/{name}", encoding="ascii", errors="replace") as fh:
            return fh.read()
    return netns.read_proc_net(name)


def parse_fib_trie_locals(text: str) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    last_leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last_leaf = stripped[3:].strip()
        elif "host LOCAL" in stripped and last_leaf:
            addr = ipaddress.IPv4Address(last_leaf)
            if addr not in out:
                out.append(addr)
    return out


def parse_if_inet6(text: str) -> list[ipaddress.IPv6Address]:
    out: list[ipaddress.IPv6Address] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            out.append(ipaddress.IPv6Address(int(fields[0], 16)))
    return out


def local_addresses(netns: Netns | None = None) -> list[IPAddress]:
    addrs: list[IPAddress] = list(parse_fib_trie_locals(_read(netns, "fib_trie")))
    try:
        addrs.extend(parse_if_inet6(_read(netns, "if_inet6")))
    except OSError:
        pass  # IPv6 disabled in this kernel/namespace
    return addrs


def usable(addr: IPAddress) -> bool:
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified)


def detect_ipv6(addrs: list[IPAddress], dual_stack: bool) -> bool:
    """Istio's rule: IPv6 iff the first usable address is v6 (Go lists IPv4 first); with
    dual stack, iff any usable v6 address exists."""
    good = [a for a in addrs if usable(a)]
    if not good:
        raise ApplyError("no valid local IP address found in the pod network namespace")
    has_v4 = any(a.version == 4 for a in good)
    has_v6 = any(a.version == 6 for a in good)
    return has_v6 and (dual_stack or not has_v4)
