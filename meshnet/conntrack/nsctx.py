"""Run a function inside another network namespace without moving the calling thread.

setns(2) is per-thread and Python 3.11 has no os.setns, so a short-lived thread enters the
namespace through libc, runs the function (sockets bind to the netns they are created in,
/proc/thread-self/net shows that netns) and returns the result.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


class NetnsError(Exception):
    """The namespace does not exist or cannot be entered."""


def resolve_netns(netns: str | None = None, pid: int | None = None) -> str:
    """Turn a name, a path or a PID into a /run/netns or /proc path; never creates anything."""
    if pid is not None:
        path = f"/proc/{pid}/ns/net"
    elif netns is None:
        raise NetnsError("give a network namespace (--netns NAME|PATH or --pid PID)")
    elif "/" in netns:
        path = netns
    else:
        path = f"/run/netns/{netns}"
    if not os.path.exists(path):
        what = f"process {pid}" if pid is not None else f"network namespace {netns!r}"
        raise NetnsError(f"{what} not found ({path} does not exist)")
    return path


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


def run_in_netns(path: str | None, fn: Callable[[], T]) -> T:
    """Call fn() in the netns at `path` (None: the current one) and return its result."""
    if path is None:
        return fn()
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            box["err"] = NetnsError(f"cannot open network namespace {path}: {e.strerror}")
            return
        try:
            # The thread dies afterwards, so there is no need to switch back (and /proc/1/ns/net
            # may be unreadable anyway).
            _setns(target)
            box["res"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e
        finally:
            os.close(target)

    t = threading.Thread(target=worker, name="meshnet-netns", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]  # type: ignore[misc]
    return box["res"]  # type: ignore[return-value]


def nsenter_argv(path: str | None, argv: list[str]) -> list[str]:
    """argv that runs a program inside the namespace (no remount of /sys, unlike ip netns exec)."""
    if path is None:
        return list(argv)
    return ["nsenter", f"--net={path}", "--", *argv]
