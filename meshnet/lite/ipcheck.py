"""Is this text an IP address, and which family: the start-up-cheap check for pod-start paths.

`ipaddress` costs ~5 ms and pulls functools/collections/re onto the istio-init path (the start-up
budget, docs/applier.md). `_socket.inet_pton` (the C module under `socket`) accepts and rejects the
same spellings as `ipaddress.ip_address` for addresses without a zone id (no leading zeros, no
spaces, no embedded IPv4 with leading zeros); tests/e2e/test_startup_budget.py compares the two.
"""

from __future__ import annotations

import _socket


def ip_version(text: str) -> int | None:
    """4 or 6 when `text` is an address as ipaddress.ip_address reads it, else None. Zone ids
    ("fe80::1%eth0") are rejected: callers that accept them strip the zone first."""
    for family, version in ((_socket.AF_INET, 4), (_socket.AF_INET6, 6)):
        try:
            _socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return version
    return None
