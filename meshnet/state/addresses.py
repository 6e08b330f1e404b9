"""Local addresses of a namespace and Istio's IPv6 detection rule, without netlink libraries.

IPv4 local addresses come from /proc/net/fib_trie (LOCAL host routes), IPv6 from
/proc/net/if_inet6: both are per network namespace and cheap to read. The detection used at pod
start (`ipv6_enabled`) works on the text itself, so a pod start does not import `ipaddress`.
"""

from __future__ import annotations

from meshnet.errors import ApplyError

TYPE_CHECKING = False  # keep `typing` off the start-up path
if TYPE_CHECKING:
    import ipaddress

    from meshnet.apply.netns import Netns

    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _read(netns: Netns | None, name: str) -> str:
    if netns is None:
        with open(f"/proc/thread-self/net/{name}", encoding="ascii", errors="replace") as fh:
            return fh.read()
    return netns.read_proc_net(name)


def fib_trie_locals(text: str) -> list[str]:
    """IPv4 addresses of the namespace: the `/32 host LOCAL` leaves of the FIB trie, in order."""
    out: list[str] = []
    last_leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last_leaf = stripped[3:].strip()
        elif "host LOCAL" in stripped and last_leaf and last_leaf not in out:
            out.append(last_leaf)
    return out


def if_inet6_hex(text: str) -> list[str]:
    """IPv6 addresses of the namespace as /proc/net/if_inet6 prints them (32 hex digits)."""
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            out.append(fields[0].lower())
    return out


def _usable_v4(addr: str) -> bool:
    return not (addr.startswith(("127.", "169.254.")) or addr == "0.0.0.0")


def _usable_v6(hex32: str) -> bool:
    loopback, unspecified = "0" * 31 + "1", "0" * 32
    link_local = hex32[:2] == "fe" and hex32[2] in "89ab"  # fe80::/10
    return not (hex32 in (loopback, unspecified) or link_local)


def _read_families(netns: Netns | None) -> tuple[list[str], list[str]]:
    try:
        v4 = fib_trie_locals(_read(netns, "fib_trie"))
    except FileNotFoundError:
        # An empty FIB (lo down and no IPv4 address, e.g. an IPv6-only pod) reads as a missing
        # file through the prefetched snapshot: it means "no IPv4 address", not an error.
        v4 = []
    try:
        v6 = if_inet6_hex(_read(netns, "if_inet6"))
    except OSError:
        v6 = []  # IPv6 disabled in this kernel/namespace
    return v4, v6


def ipv6_enabled(netns: Netns | None, dual_stack: bool) -> bool:
    """Istio's rule: IPv6 iff the first usable address is v6 (Go lists IPv4 first); with dual
    stack, iff any usable v6 address exists. No usable address at all is an error, as in Istio."""
    v4, v6 = _read_families(netns)
    has_v4 = any(_usable_v4(a) for a in v4)
    has_v6 = any(_usable_v6(a) for a in v6)
    if not (has_v4 or has_v6):
        raise ApplyError("no valid local IP address found in the pod network namespace")
    return has_v6 and (dual_stack or not has_v4)


def _usable_v6_text(addr: str) -> bool:
    first = addr.split(":", 1)[0].lower()
    link_local = len(first) == 4 and first[:3] in ("fe8", "fe9", "fea", "feb")
    return not (link_local or addr in ("::1", "::"))


def ipv6_from_addresses(cidrs: list[str], dual_stack: bool) -> bool | None:
    """Istio's rule over addresses given as text (a CNI result's `ips`): None when none is usable,
    so the caller reads the namespace instead."""
    hosts = [c.split("/", 1)[0] for c in cidrs]
    has_v4 = any(_usable_v4(h) for h in hosts if ":" not in h)
    has_v6 = any(_usable_v6_text(h) for h in hosts if ":" in h)
    if not (has_v4 or has_v6):
        return None
    return has_v6 and (dual_stack or not has_v4)


def local_addresses(netns: Netns | None = None) -> list[IPAddress]:
    """Every local address as an ipaddress object (for diagnostics; pod start uses ipv6_enabled)."""
    import ipaddress

    v4, v6 = _read_families(netns)
    return [ipaddress.IPv4Address(a) for a in v4] + [ipaddress.IPv6Address(int(h, 16)) for h in v6]


def usable(addr: IPAddress) -> bool:
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified)


def detect_ipv6(addrs: list[IPAddress], dual_stack: bool) -> bool:
    """`ipv6_enabled` over already-parsed addresses."""
    good = [a for a in addrs if usable(a)]
    if not good:
        raise ApplyError("no valid local IP address found in the pod network namespace")
    has_v4 = any(a.version == 4 for a in good)
    has_v6 = any(a.version == 6 for a in good)
    return has_v6 and (dual_stack or not has_v4)
