"""Checks of what the runtime hands the plugin before anything is read or written.

CNI_NETNS must be an absolute path to a network namespace that is not the plugin's own (a
runtime bug or a hostile caller pointing it at /proc/self/ns/net would otherwise have the node's
rules rewritten), and a chained ADD needs the main plugin's result with the pod's addresses.
Stdlib only: this is on every pod start's path.
"""

from __future__ import annotations

import os

from meshnet.apply.netns import Netns, NetnsError
from meshnet.cni.protocol import E_INVALID_CONFIG, E_INVALID_ENV, E_UNKNOWN_CONTAINER, CniError
from meshnet.errors import quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

OWN_NETNS = "/proc/self/ns/net"
_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:/")


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def is_own_netns(path: str) -> bool:
    """Same namespace as the plugin's (nsfs device + inode), however the path spells it."""
    try:
        return _identity(path) == _identity(OWN_NETNS)
    except OSError:
        return False


def check_netns_path(path: str) -> None:
    """CNI_NETNS is a path (the spec: "/proc/[pid]/ns/net or a bind-mount"), never a bare name."""
    if not path.startswith("/"):
        raise CniError(E_INVALID_ENV, f"CNI_NETNS {quote(path)} is not an absolute path to a network namespace")


def pod_netns(path: str) -> Netns:
    """The pod's namespace from CNI_NETNS, or a CniError with the spec's code."""
    check_netns_path(path)
    if not os.path.exists(path):
        raise CniError(E_UNKNOWN_CONTAINER, f"pod network namespace {quote(path)} does not exist")
    try:
        netns = Netns.resolve(path)
    except NetnsError as exc:
        raise CniError(E_INVALID_ENV, f"CNI_NETNS is not a usable network namespace: {exc}") from None
    if is_own_netns(path):
        raise CniError(E_INVALID_ENV, f"CNI_NETNS {quote(path)} is the plugin's own network namespace, "
                       "not a pod's: refusing to program it")
    return netns


def prev_result_addresses(doc: Mapping[str, Any]) -> list[str]:
    """`prevResult.ips[].address` of a chained ADD; a missing or malformed one is an error (the
    CNI spec: a chained plugin gets the previous plugin's result; without the pod's addresses
    there is nothing to decide IPv6 on and the main plugin did not run)."""
    prev = doc.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(E_INVALID_CONFIG, "ADD needs prevResult: meshnet-cni is a chained plugin and runs after "
                       "the plugin that gives the pod its addresses")
    ips = prev.get("ips")
    if not isinstance(ips, list) or not ips:
        raise CniError(E_INVALID_CONFIG, "prevResult has no ips: the main plugin gave the pod no address")
    out: list[str] = []
    for ip in ips:
        address = ip.get("address") if isinstance(ip, dict) else None
        if not isinstance(address, str) or "/" not in address or len(address) > 64 or \
                not set(address) <= _ADDRESS_CHARS:
            raise CniError(E_INVALID_CONFIG, f"prevResult ips entry {quote(ip)} has no valid address (IP/prefix)")
        out.append(address)
    return out
