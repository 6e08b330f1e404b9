"""Network-namespace handle used by every part of meshnet.

A :class:`Netns` names one network namespace (``/run/netns/NAME``, any nsfs path, or
``/proc/PID/ns/net``) and offers ways to act inside it **without ever switching the
calling thread**:

* subprocesses go through ``nsenter --net=PATH --`` (:meth:`Netns.run`, :meth:`Netns.popen`);
* in-process objects that bind to a namespace at creation (sockets, ``/proc/thread-self/net``
  files, ``/proc/sys/net`` files) are created by a short-lived dedicated thread that calls
  ``setns(2)`` and then dies, so no pooled or main thread is ever left in another namespace;
* pyroute2 is bound with ``flags=0`` so a typo can never create a namespace.

When the namespace is the one the calling thread is already in (istio-init, istio-validation, a
debug container: ``Netns.resolve()`` with no argument), none of that happens: tools run directly,
sockets and netlink are opened directly, /proc is read directly. setns(2) needs CAP_SYS_ADMIN even
to "enter" one's own namespace, and a pod gets only CAP_NET_ADMIN + CAP_NET_RAW (or nothing).

Import cost matters (the CNI plugin imports this on every invocation): only cheap stdlib
modules are imported at module level; ctypes and pyroute2 are imported lazily.
"""

from __future__ import annotations

import errno
import os

from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass

TYPE_CHECKING = False  # `typing` and `socket` cost ~7 ms to import; the CNI/istio-init paths need neither
if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TypeVar

    from pyroute2 import IPRoute

    from meshnet.lite.spawn import Completed

    _T = TypeVar("_T")

__all__ = ["NETNS_RUN_DIR", "Netns", "NetnsError", "which"]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3): returns the CLONE_NEW* type of an nsfs fd (Linux >= 4.11).
_NS_GET_NSTYPE = 0xB703


def which(name: str) -> str | None:
    """`shutil.which` without importing shutil (~3 ms with bz2/lzma) on the start-up path."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


_PREFETCHED: dict[str, dict[str, str | None]] = {}


def _cmdline(argv: Sequence[str]) -> str:
    import shlex  # only error messages need quoting

    return shlex.join(argv)


class _Prefetch:
    def __init__(self, netns: Netns, names: tuple[str, ...]) -> None:
        self.netns = netns
        self.names = names

    def __enter__(self) -> Netns:
        _PREFETCHED[self.netns.path] = self.netns._read_many(self.names)
        return self.netns

    def __exit__(self, *exc: object) -> None:
        _PREFETCHED.pop(self.netns.path, None)


class NetnsError(MeshnetError):
    """A namespace is missing/invalid, or a command run inside it failed."""


def _setns(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the *calling thread only*."""
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes  # lazy: ~5 ms, only needed when actually entering a namespace

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _check_netns_fd(fd: int, path: str, label: str) -> None:
    """Raise NetnsError unless fd is an nsfs file of a *network* namespace."""
    import fcntl  # cheap C module, but only needed here

    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as e:
        # ENOTTY: a plain file, e.g. a stale /run/netns entry whose bind mount is gone.
        raise NetnsError(f"{label!r} is not a namespace file ({path}): {e.strerror}") from None
    if nstype != CLONE_NEWNET:
        raise NetnsError(f"{label!r} is a namespace but not a network namespace ({path})")


@dataclass(frozen=True)
class Netns:
    """One network namespace. ``path`` is what gets opened; ``label`` is for messages."""

    path: str
    label: str

    # ---------------------------------------------------------------- construction
    @classmethod
    def resolve(cls, netns: str | None = None, pid: int | None = None) -> Netns:
        """Resolve a name, nsfs path or PID to a validated handle. Never creates anything.

        * ``netns="mn-x"`` -> ``/run/netns/mn-x``; a value containing ``/`` is used as a path;
        * ``pid=123`` -> ``/proc/123/ns/net``;
        * neither -> the current namespace (``/proc/self/ns/net``).
        """
        if netns is not None and pid is not None:
            raise NetnsError("give either a namespace name/path or a pid, not both")
        if pid is not None:
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
                raise NetnsError(f"invalid pid {pid!r}")
            path, label = f"/proc/{pid}/ns/net", f"pid {pid}"
        elif netns is None:
            path, label = "/proc/self/ns/net", "current"
        else:
            if not netns or netns in (".", ".."):
                raise NetnsError(f"invalid network namespace name {netns!r}")
            path = netns if "/" in netns else f"{NETNS_RUN_DIR}/{netns}"
            label = netns
        ns = cls(path=path, label=label)
        ns._open().__exit__(None, None, None)  # validates
        return ns

    def _open(self) -> _Fd:
        """Open and validate the namespace file (O_RDONLY, never O_CREAT)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetnsError(self._missing_msg()) from None
        except OSError as e:
            raise NetnsError(
                f"cannot open network namespace {self.label!r} ({self.path}): {e.strerror}"
            ) from None
        try:
            _check_netns_fd(fd, self.path, self.label)
        except BaseException:
            os.close(fd)
            raise
        return _Fd(fd)

    def _enter_failed(self, exc: OSError) -> str:
        """One line for a refused setns/nsenter: names CAP_SYS_ADMIN when that is what is missing."""
        if exc.errno == errno.EPERM:
            from meshnet.apply import caps

            why = caps.explain(f"entering network namespace {self.label!r} ({self.path})", [caps.SYS_ADMIN])
            if why:
                return why
        return f"cannot enter network namespace {self.label!r} ({self.path}): {exc.strerror or exc}"

    def _missing_msg(self) -> str:
        if self.label.startswith("pid "):
            return f"process {self.label[4:]} not found ({self.path})"
        return f"network namespace {self.label!r} not found ({self.path})"

    # ---------------------------------------------------------------- identity
    @property
    def inode(self) -> int:
        """nsfs inode number (what ``ip netns identify`` / ``ls -l /proc/PID/ns/net`` show)."""
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            raise NetnsError(self._missing_msg()) from None

    def is_current(self) -> bool:
        """True if the *calling thread* is already in this namespace."""
        try:
            mine = os.stat(self.path)
        except FileNotFoundError:
            raise NetnsError(self._missing_msg()) from None
        cur = os.stat("/proc/thread-self/ns/net")
        return (mine.st_dev, mine.st_ino) == (cur.st_dev, cur.st_ino)

    def __str__(self) -> str:
        return self.label

    # ---------------------------------------------------------------- subprocesses
    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped with nsenter (plain argv when already in this namespace)."""
        if self.is_current():
            return list(argv)
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 30.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run argv inside the namespace, text mode, stdout/stderr captured.

        ``env`` replaces the environment (subprocess semantics). A timeout or a missing
        executable always raises NetnsError; a non-zero exit raises it only with check=True.
        """
        from meshnet.lite import spawn  # posix_spawn runner: `subprocess` would add ~7 ms of imports

        full = self.argv(argv)
        entering = full[0] == "nsenter"
        try:
            cp = spawn.run(full, input=input, timeout=timeout, env=env)
        except spawn.SpawnTimeout:
            raise NetnsError(f"[{self.label}] {_cmdline(argv)}: timed out after {timeout:g}s") from None
        except FileNotFoundError as e:
            missing = e.filename or full[0]
            raise NetnsError(f"[{self.label}] {_cmdline(argv)}: executable not found ({missing})") from None
        if entering and cp.returncode != 0 and (cp.stderr or "").startswith("nsenter: "):
            # nsenter itself failed (the program never ran): not the tool's error, whatever `check` says.
            reason = cp.stderr.splitlines()[0].removeprefix("nsenter: ").strip()
            if reason.startswith("failed to execute"):
                raise NetnsError(f"[{self.label}] {_cmdline(argv)}: executable not found ({reason})")
            raise NetnsError(self._enter_failed(OSError(errno.EPERM if "not permitted" in reason else 0, reason)))
        if check and cp.returncode != 0:
            lines = [ln for ln in (cp.stderr or "").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "(no stderr)"
            raise NetnsError(f"[{self.label}] {_cmdline(argv)}: exit status {cp.returncode}: {last}")
        return cp

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (nsenter execs, so .pid is the program's pid)."""
        import subprocess

        return subprocess.Popen(self.argv(argv), **kw)

    # ---------------------------------------------------------------- in-process, via a setns thread
    def call_in(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn()`` in a fresh thread that has joined this namespace; return its result.

        The thread exits afterwards, so nothing else ever runs in the switched thread.
        Anything fn() creates that binds at creation (sockets, opened /proc files) stays
        bound to this namespace and may be used from any thread.
        """
        if self.is_current():
            # Already here (istio-init, a debug container): no thread, no setns, which would need
            # CAP_SYS_ADMIN even to "enter" the namespace one is in.
            return fn()
        result: list[Any] = []
        error: list[BaseException] = []
        with self._open() as nsfd:  # open in the caller: a missing namespace fails here, early

            def target() -> None:
                try:
                    try:
                        _setns(nsfd.fd)
                    except OSError as e:
                        raise NetnsError(self._enter_failed(e)) from None
                    result.append(fn())
                except BaseException as e:  # re-raised in the caller
                    error.append(e)

            import threading  # lazy: only in-process namespace work needs a thread

            t = threading.Thread(target=target, name=f"netns:{self.label}", daemon=True)
            t.start()
            t.join()
        if error:
            raise error[0]
        return result[0]

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        """A socket created inside the namespace; usable from any thread afterwards."""
        import socket

        if self.is_current():
            return socket.socket(family, type, proto)
        return self.call_in(lambda: socket.socket(family, type, proto))

    def read_proc_net(self, name: str) -> str:
        """Content of /proc/thread-self/net/<name> as seen inside the namespace.

        Reading creates nothing (unlike iptables-legacy probes). Raises FileNotFoundError
        if that file does not exist there (e.g. ``ip_tables_names`` without the module).
        """
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"invalid /proc/net entry {name!r}")
        snapshot = _PREFETCHED.get(self.path)
        if snapshot is not None and name in snapshot:
            text = snapshot[name]
            if text is None:
                raise FileNotFoundError(f"/proc/net/{name} does not exist in {self.label}")
            return text
        return self.call_in(lambda: _read(f"/proc/thread-self/net/{name}"))

    def prefetch_proc_net(self, names: Sequence[str]) -> _Prefetch:
        """Context manager: read several /proc/net files in one go; read_proc_net serves them inside.

        One `nsenter grep` costs ~2 ms, where the first in-process read pays ~4 ms for ctypes
        (Python 3.11 has no os.setns). Only for short read-only phases such as detection: the
        files are a snapshot, stale once rules are written.
        """
        return _Prefetch(self, tuple(names))

    def _read_many(self, names: tuple[str, ...]) -> dict[str, str | None]:
        if self.is_current():
            paths = [f"/proc/thread-self/net/{n}" for n in names]  # /proc/net is the main thread's
            out: dict[str, str | None] = {}
            for name, path in zip(names, paths, strict=True):
                try:
                    out[name] = _read(path)
                except FileNotFoundError:
                    out[name] = None
            return out
        # grep -H prefixes each line with its file; -s: missing files are silently skipped.
        paths = [f"/proc/net/{n}" for n in names]
        res = self.run(["grep", "-sH", "", *paths], check=False)
        lines: dict[str, list[str]] = {n: [] for n in names}
        for line in res.stdout.splitlines():
            for name, path in zip(names, paths, strict=True):
                if line.startswith(path + ":"):
                    lines[name].append(line[len(path) + 1:])
                    break
        # An empty file prints nothing, like a missing one; both mean "none" for our callers.
        return {n: ("\n".join(ls) + "\n") if ls else None for n, ls in lines.items()}

    def sysctl(self, key: str) -> str:
        """Value of a sysctl as seen inside the namespace, e.g. ``net.ipv4.ip_forward``.

        ``/proc/sys/net`` is resolved against the opening thread's namespace, so it is
        read from a setns thread. Keys may use dots or slashes (``net/ipv4/conf/eth0.100/rp_filter``
        for interface names that contain dots).
        """
        rel = key.strip().strip("/")
        if "/" not in rel:
            rel = rel.replace(".", "/")
        if not rel or ".." in rel.split("/"):
            raise ValueError(f"invalid sysctl key {key!r}")
        path = f"/proc/sys/{rel}"
        try:
            return self.call_in(lambda: _read(path)).strip()
        except FileNotFoundError:
            raise NetnsError(f"[{self.label}] sysctl {key} not found ({path})") from None

    def ipr(self) -> IPRoute:
        """pyroute2 IPRoute bound to this namespace (a context manager; close it).

        flags=0: a missing namespace raises, it is never created (pyroute2's default is O_CREAT).
        """
        from pyroute2 import IPRoute  # lazy: ~140 ms import

        if self.is_current():
            return IPRoute()
        self._open().__exit__(None, None, None)  # clear NetnsError instead of pyroute2's
        try:
            return IPRoute(netns=self.path, flags=0)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NetnsError(self._missing_msg()) from None
            raise NetnsError(self._enter_failed(e)) from None


class _Fd:
    """Tiny fd owner so opened namespace fds are always closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> _Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
