"""One writer at a time per network namespace: an exclusive flock(2) on the namespace's nsfs inode.

Why the nsfs file itself and not a file under /run: the kernel keeps one nsfs inode per network
namespace, whatever path reaches it (`/proc/PID/ns/net`, `/run/netns/NAME`, a bind mount in
another mount namespace) and however private each caller's /run is. So the lock serialises every
meshnet writer of that namespace: `meshnet istio-iptables` in an istio-init container (its own
mount namespace, uid 0 with only NET_ADMIN+NET_RAW: flock needs only a read-only fd),
`meshnet-cni` ADD/DEL on the node, `meshnet apply|cleanup --netns/--pid`. It also makes Istio's
own CNI wait (it runs legacy iptables with `XTABLES_LOCKFILE=<netns path>`, an flock on the same
inode); our own legacy restores therefore get a private lock file instead (xtables.lock_env).
Only where flock on nsfs is refused (never seen on Linux >= 3.19) the fallback is
`/run/meshnet/locks/<dev>-<ino>.lock`, which serialises only within one mount namespace.

The lock is re-entrant per thread (cleanup after a failed ADD runs inside the ADD's lock), held
by a fd the short commands run under it inherit (see spawn.inherit): if the meshnet process is
SIGKILLed while an iptables-restore runs, the next writer waits for that restore to end instead of
racing it. The fd dies with the last of them, so a killed writer never leaves the lock held.

Cost on the pod-start path: os + _thread (built in) and fcntl (a C module), imported lazily.
"""

from __future__ import annotations

import os
import time
from _thread import get_ident

from meshnet.errors import ApplyError
from meshnet.lite import spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from meshnet.apply.netns import Netns

WAIT_SECONDS = 60.0  # longer than any single write; a holder past this is stuck, say so
FALLBACK_DIR = "/run/meshnet/locks"

# (dev, ino, thread) -> [fd, depth]: re-entry in the same thread only; another thread contends.
_HELD: dict[tuple[int, int, int], list[int]] = {}


def identity(netns: Netns) -> tuple[int, int]:
    """(st_dev, st_ino) of the namespace: the same for every path to it."""
    from meshnet.apply.netns import NetnsError

    try:
        st = os.stat(netns.path)
    except FileNotFoundError:
        raise NetnsError(netns._missing_msg()) from None
    return st.st_dev, st.st_ino


class NamespaceLock:
    """Context manager: hold the namespace's writer lock (waits up to `wait` seconds)."""

    def __init__(self, netns: Netns, wait: float = WAIT_SECONDS) -> None:
        self.netns = netns
        self.wait = wait
        self.key: tuple[int, int, int] | None = None

    def __enter__(self) -> NamespaceLock:
        dev, ino = identity(self.netns)
        key = (dev, ino, get_ident())
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
        else:
            fd = _acquire(self.netns, dev, ino, self.wait)
            _HELD[key] = [fd, 1]
            spawn.inherit(fd)
        self.key = key
        return self

    def __exit__(self, *exc: object) -> None:
        key, self.key = self.key, None
        if key is None:
            return
        held = _HELD[key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            spawn.disinherit(held[0])
            os.close(held[0])  # releases the flock once the children that inherited it are gone


def locked(netns: Netns, wait: float = WAIT_SECONDS) -> NamespaceLock:
    return NamespaceLock(netns, wait)


def _acquire(netns: Netns, dev: int, ino: int, wait: float) -> int:
    fd = os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != ino:  # the path now names another namespace: never lock the wrong one
            raise ApplyError(f"network namespace {netns.label!r} changed while it was being locked")
        try:
            _flock(fd, netns, wait)
            return fd
        except OSError:  # flock refused on nsfs (not expected): a lock file in this mount namespace
            pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    os.makedirs(FALLBACK_DIR, mode=0o700, exist_ok=True)
    fd = os.open(f"{FALLBACK_DIR}/{dev}-{ino}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _flock(fd, netns, wait)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flock(fd: int, netns: Netns, wait: float) -> None:
    """LOCK_EX with a bounded wait (polling: no threads, no signals)."""
    import fcntl  # lazily: only a namespace writer pays for it

    flock, ex_nb = fcntl.flock, fcntl.LOCK_EX | fcntl.LOCK_NB
    deadline = time.monotonic() + wait
    pause = 0.001
    while True:
        try:
            flock(fd, ex_nb)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ApplyError(f"{netns.label}: another writer has held the namespace lock for more than "
                                 f"{wait:g}s{_holder(fd)}; not changing anything") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _holder(fd: int) -> str:
    """' (pid N)' from /proc/locks, when the kernel tells."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            rows = [line.split() for line in f]
    except OSError:
        return ""
    pids = sorted({r[4] for r in rows if len(r) > 5 and r[1] == "FLOCK" and r[5] == wanted})
    return f" (pid {', '.join(pids)})" if pids else ""


def held_by_this_thread() -> Iterator[tuple[int, int]]:
    me = get_ident()
    return ((dev, ino) for dev, ino, tid in _HELD if tid == me)
