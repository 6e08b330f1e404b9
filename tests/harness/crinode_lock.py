"""One containerd CRI node at a time on this machine, across test runs (and within a run, re-entrant).

Our crinode (tests/harness/crinode) kills only its own node's pods, but containerd 1.6 keeps machine-wide
state (/var/lib/cni/results, /run/containerd/s) and older crinode copies (other checkouts) kill every
process under any `*/crinode-pods/*` cgroup; on 2 cores, two nodes at once also make both slow. So every
user of crinode in the tests holds this lock from before `setup` until after `down` (two clones, a
developer's run next to CI's); a process may hold it several times (bench/cri.py runs three nodes at once).
"""

from __future__ import annotations

import fcntl
import os

LOCK_FILE = os.environ.get("MESHNET_CRINODE_LOCK", "/run/meshnet-crinode.lock")
_held = {"fd": -1, "depth": 0}


def acquire() -> None:
    if _held["depth"] == 0:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another suite's node: wait until it is down
        _held["fd"] = fd
    _held["depth"] += 1


def release() -> None:
    if _held["depth"] == 0:
        return
    _held["depth"] -= 1
    if _held["depth"] == 0:
        os.close(_held["fd"])
        _held["fd"] = -1
