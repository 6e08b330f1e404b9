"""Parsers for the values that flow into iptables-restore / nft text.

Every value is checked against a strict grammar before it can reach a rule, so no flag, env
variable, YAML field or pod annotation can inject text into a restore or nft transaction.
"""

from __future__ import annotations

from meshnet.errors import SpecError, quote

# Character classes as sets, not regexes: `re` (with enum) costs ~5 ms at every pod start.
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_IFACE_CHARS = _LETTERS | _DIGITS | frozenset("_.@:-")
_OWNER_CHARS = _LETTERS | _DIGITS | frozenset("_.-")
_FORBIDDEN = frozenset("\"'`;#{}$\\\x7f")
MAX_OWNER_GROUPS_INCLUDE = 64
# Routing tables 253 (default), 254 (main) and 255 (local) are the kernel's own, and 0 means
# "unspecified": a TPROXY `fwmark lookup local` would break every connection of the pod.
ROUTE_TABLE_MIN, ROUTE_TABLE_MAX = 1, 252
MARK_MIN, MARK_MAX = 1, 0xFFFFFFFF  # mark 0 is every unmarked packet
ID_MAX = 0xFFFFFFFE  # uid/gid: (uid_t)-1 means "no change" to the kernel, never a real id
MAX_NUMBER_DIGITS = 20  # longer digit strings are refused before int() (Python caps int() at 4300)


def _has_forbidden(text: str) -> bool:
    return any(c in _FORBIDDEN or c.isspace() or c < " " for c in text)


def is_interface_name(name: str) -> bool:
    """Linux IFNAMSIZ is 16 including the NUL; iptables accepts a trailing '+' wildcard."""
    base = name[:-1] if name.endswith("+") else name
    return 1 <= len(base) <= 15 and all(c in _IFACE_CHARS for c in base) and name not in (".", "..")


def is_owner(owner: str) -> bool:
    """A numeric id (up to 10 digits) or a user/group name (iptables' owner match resolves names)."""
    if owner and all(c in _DIGITS for c in owner):
        return len(owner) <= 10 and int(owner) <= ID_MAX
    return (1 <= len(owner) <= 32 and (owner[0] in _LETTERS or owner[0] == "_")
            and all(c in _OWNER_CHARS for c in owner))


def split_list(field: str, value: str) -> list[str]:
    """Split a comma list; empty items are dropped (Istio tolerates trailing commas)."""
    if "\n" in value or "\r" in value or "\x00" in value:
        raise SpecError(field, value, "must be a single line")
    items = []
    for raw in value.split(","):
        item = raw.strip(" \t")
        if not item:
            continue
        if _has_forbidden(item):
            raise SpecError(field, value, f"item {quote(item)} contains whitespace or a forbidden character")
        items.append(item)
    return items


def _digits(value: object) -> str | None:
    """The value as an ASCII digit string of sane length, else None (bools are not numbers)."""
    if isinstance(value, bool):
        return None
    text = str(value).strip() if isinstance(value, str | int) else ""
    if not text or len(text) > MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return text


def parse_port(field: str, value: str | int) -> int:
    text = _digits(value)
    if text is None:
        raise SpecError(field, value, "a port must be a number between 1 and 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise SpecError(field, value, "a port must be a number between 1 and 65535")
    return port


def parse_ports(field: str, value: str) -> tuple[int, ...]:
    return tuple(parse_port(field, p) for p in split_list(field, value))


def parse_ports_or_wildcard(field: str, value: str) -> tuple[bool, tuple[int, ...]]:
    """'*' means every port; otherwise a port list. Returns (wildcard, ports)."""
    items = split_list(field, value)
    if "*" in items:
        if len(items) != 1:
            raise SpecError(field, value, "'*' cannot be combined with other ports")
        return True, ()
    return False, tuple(parse_port(field, p) for p in items)


def format_cidr(field: str, text: str) -> str:
    """Validate a CIDR and render it the way Go's netip.Prefix.String() does (address kept, not masked)."""
    if "/" not in text:
        raise SpecError(field, text, "expected a CIDR such as 10.0.0.0/8 (prefix length missing)")
    if "%" in text:  # ipaddress accepts "fe80::1%eth0/64"; a zone id cannot reach a rule
        raise SpecError(field, text, "a CIDR with a zone id (%...) cannot be matched by a rule")
    import ipaddress  # lazy: ~2.5 ms, and most pods carry no CIDR at all

    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise SpecError(field, text, f"not a valid CIDR ({exc})") from None
    if not text.split("/", 1)[1].isdigit():
        raise SpecError(field, text, "prefix length must be a number")
    return f"{iface.ip.compressed}/{iface.network.prefixlen}"


def parse_cidrs(field: str, value: str, *, allow_wildcard: bool) -> tuple[bool, tuple[str, ...]]:
    items = split_list(field, value)
    if "*" in items:
        if not allow_wildcard:
            raise SpecError(field, value, "'*' is not allowed here (it would exclude every destination)")
        if len(items) != 1:
            raise SpecError(field, value, "'*' cannot be combined with CIDRs")
        return True, ()
    return False, tuple(format_cidr(field, c) for c in items)


def parse_interfaces(field: str, value: str) -> tuple[str, ...]:
    names = split_list(field, value)
    for name in names:
        if not is_interface_name(name):
            raise SpecError(field, name, "not a valid interface name (1-15 of A-Z a-z 0-9 _ . @ : -)")
    return tuple(names)


def parse_owners(field: str, value: str) -> tuple[str, ...]:
    owners = split_list(field, value)
    for owner in owners:
        if owner.isascii() and owner.isdigit() and not is_owner(owner):
            raise SpecError(field, owner, f"a numeric id must be between 0 and {ID_MAX}")
        if not is_owner(owner):
            raise SpecError(field, owner, "expected a numeric id or a user/group name")
    return tuple(owners)


def parse_int(field: str, value: str | int, lo: int, hi: int) -> int:
    text = _digits(value)
    if text is None or not lo <= int(text) <= hi:
        raise SpecError(field, value, f"expected a number between {lo} and {hi}")
    return int(text)


def parse_route_table(field: str, value: str | int) -> int:
    text = _digits(value)
    if text is None or not ROUTE_TABLE_MIN <= int(text) <= ROUTE_TABLE_MAX:
        raise SpecError(field, value, f"expected a routing table between {ROUTE_TABLE_MIN} and {ROUTE_TABLE_MAX} "
                        "(0 and 253-255 are the kernel's unspec, default, main and local tables)")
    return int(text)


def parse_mark(field: str, value: str | int) -> int:
    return parse_int(field, value, MARK_MIN, MARK_MAX)


MAX_SECONDS = 86400.0 * 365  # a year: longer waits are typos, and time.sleep() overflows near 1e10


def parse_seconds(field: str, value: object, *, lo: float = 0.0, hi: float = MAX_SECONDS,
                  allow_zero: bool = True) -> float:
    """A duration in seconds: finite (no nan/inf), within [lo, hi], zero only when allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):  # True is no duration
        raise SpecError(field, value, "expected a number of seconds")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise SpecError(field, value, "expected a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise SpecError(field, value, "a duration must be a finite number of seconds")
    if not lo <= seconds <= hi or (seconds == 0 and not allow_zero):
        low = f"> {lo:g}" if not allow_zero and lo == 0 else f">= {lo:g}"
        raise SpecError(field, value, f"a duration must be {low} and <= {hi:g} seconds")
    return seconds


def parse_bool(field: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    # Go's strconv.ParseBool accepts these spellings.
    if text in ("1", "t", "true", "y", "yes", "on"):
        return True
    if text in ("0", "f", "false", "n", "no", "off", ""):
        return False
    raise SpecError(field, value, "expected true or false")


def parse_loopback_cidr(field: str, value: str) -> str:
    if value == "127.0.0.1/32":
        return value  # the default, known good: no need to load ipaddress for it
    import ipaddress

    text = format_cidr(field, value.strip())
    net = ipaddress.ip_interface(text)
    if net.version != 4 or not net.ip.is_loopback:
        raise SpecError(field, value, "must be an IPv4 loopback CIDR inside 127.0.0.0/8")
    if not 8 <= net.network.prefixlen <= 32:
        raise SpecError(field, value, "prefix length must be between 8 and 32")
    return text


def parse_ip(field: str, value: str) -> str:
    # Istio renders resolv.conf servers verbatim (e.g. "::127.0.0.53/128"), so keep the text.
    from meshnet.lite.ipcheck import ip_version  # not ipaddress: this is on the istio-init path (DNS capture)

    text = value.strip()
    if "%" in text:  # Python accepts "fe80::1%eth0"; a zone id cannot reach an iptables/nft rule
        raise SpecError(field, value, "an address with a zone id (%...) cannot be matched by a rule")
    if ip_version(text) is None:
        raise SpecError(field, value, "not a valid IP address")
    return text


PREVENTION_CHOICES = ("auto", "off", "early-demux", "tproxy")


def parse_prevention(field: str, value: str) -> str:
    """--prevent-tuple-collision: auto|off|early-demux|tproxy."""
    text = value.strip() if isinstance(value, str) else value
    if text not in PREVENTION_CHOICES:
        raise SpecError(field, value, "expected one of " + ", ".join(PREVENTION_CHOICES))
    return text
