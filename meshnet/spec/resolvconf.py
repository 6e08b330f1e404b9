"""Read nameservers from a resolv.conf, the way Istio does (miekg/dns ClientConfigFromFile)."""

from __future__ import annotations

from meshnet.errors import SpecError
from meshnet.lite.ipcheck import ip_version


def read_nameservers(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (ipv4 servers, ipv6 servers) in file order. Unparsable server lines are errors."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise SpecError("resolv-conf", path, f"cannot read it ({exc.strerror})") from None
    return parse_nameservers(text, source=path)


def parse_nameservers(text: str, source: str = "resolv.conf") -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: list[str] = []
    v6: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        server = fields[1].split("%", 1)[0]  # drop an IPv6 zone: it cannot go into a rule
        version = ip_version(server)
        if version is None:
            raise SpecError(f"nameserver in {source}", fields[1], "not an IP address")
        (v4 if version == 4 else v6).append(server)
    return tuple(v4), tuple(v6)
