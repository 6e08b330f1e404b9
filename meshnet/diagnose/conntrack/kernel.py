"""Kernel-side evidence of a namespace: TCP counters, sysctls and the kernel version."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from meshnet.apply.collision_prevention import FIXED_KERNEL
from meshnet.apply.collision_prevention import kernel_version as parse_version

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

# The counters that move when a collision SYN lands on the wrong socket (see the collision doc):
# a challenge ACK, or on 6.1 with unlucky timestamps a PAWS rejection, once per retransmitted SYN.
HANG_COUNTERS = ("TcpExtTCPSYNChallenge", "TcpExtTCPChallengeACK", "TcpExtPAWSEstab")
WATCHED_COUNTERS = (*HANG_COUNTERS, "TcpEstabResets", "TcpExtTCPAbortOnData", "TcpAttemptFails")
# FIXED_KERNEL: from 6.7 the early-demux socket is dropped after the implicit source rewrite
# (e27c3295114b). It and the version parser are the ones the prevention (pod-start path, no `re`) uses.


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat or /proc/net/snmp: header/value line pairs -> {"TcpExtTCPSYNChallenge": n}."""
    out: dict[str, int] = {}
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if not head or head[0] != vals[0]:
            continue
        prefix = head[0].rstrip(":")
        for k, v in zip(head[1:], vals[1:], strict=False):
            try:
                out[prefix + k] = int(v)
            except ValueError:
                pass
    return out


def read_counters(ns: Netns) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in ("netstat", "snmp"):
        try:
            out.update(parse_netstat(ns.read_proc_net(name)))
        except (FileNotFoundError, OSError):
            pass
    return out


def sysctl_int(ns: Netns, key: str) -> int | None:
    try:
        return int(ns.sysctl(key).split()[0])
    except Exception:  # noqa: BLE001 - missing module or key: simply unknown
        return None


def kernel_release() -> str:
    return os.uname().release


def has_demux_fix(release: str | None) -> bool | None:
    """True on >= 6.7, False before, None if unknown (offline without a version)."""
    v = parse_version(release) if release else None
    return None if v is None else v >= FIXED_KERNEL
