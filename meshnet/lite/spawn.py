"""Run a command with its stdin fed and its output captured, on posix_spawn: no `subprocess`.

`import subprocess` brings locale, signal, selectors and threading (~7 ms here), a sixth of an
istio-init or CNI ADD run, for the one thing those paths need: run iptables-restore or nft with
a payload and read what it says. This does exactly that with os.posix_spawnp, pipes and poll.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Completed:
    """The subset of subprocess.CompletedProcess callers use."""

    __slots__ = ("args", "returncode", "stdout", "stderr")

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Completed(args={self.args!r}, returncode={self.returncode})"


class SpawnTimeout(Exception):
    pass


# thread ident -> fds every child that thread spawns inherits (the namespace writer lock, so that
# a restore outliving a SIGKILLed meshnet still holds it; see backends/nslock.py).
_INHERITED: dict[int, list[int]] = {}
# Linux pipe capacity: a payload up to this size is in the pipe before the child starts.
PIPE_CAPACITY = 65536


def inherit(fd: int) -> None:
    from _thread import get_ident

    _INHERITED.setdefault(get_ident(), []).append(fd)


def disinherit(fd: int) -> None:
    from _thread import get_ident

    fds = _INHERITED.get(get_ident(), [])
    if fd in fds:
        fds.remove(fd)
    if not fds:
        _INHERITED.pop(get_ident(), None)


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0,
        env: Mapping[str, str] | None = None) -> Completed:
    """Run argv (PATH lookup), feed `input` (or /dev/null), capture stdout/stderr as UTF-8.

    Raises FileNotFoundError when the program does not exist and SpawnTimeout (after killing
    the child) when it outlives `timeout`.

    A payload that fits the pipe is written (and the pipe closed) before the child starts: the
    child then reads all of it or never runs, even if this process is SIGKILLed right after the
    spawn (a restore never commits half a payload because its feeder died).
    """
    args = list(argv)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    payload = (input or "").encode()
    if payload and len(payload) <= PIPE_CAPACITY:
        os.set_blocking(in_w, False)
        try:
            payload = payload[os.write(in_w, payload):]
        except BlockingIOError:  # a capacity-limited pipe (pipe-user-pages-soft): fed below instead
            pass
    actions = [
        (os.POSIX_SPAWN_DUP2, in_r, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    if _INHERITED:
        from _thread import get_ident

        # dup2(fd, fd) clears FD_CLOEXEC in the child only (glibc >= 2.29)
        actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in _INHERITED.get(get_ident(), ())]
    try:
        pid = os.posix_spawnp(args[0], args, dict(env) if env is not None else os.environ,
                              file_actions=actions)
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    # Each fd is closed exactly once: a second close(2) of a number another thread has just been
    # given (doctor --all runs many commands at once) would close that thread's file.
    owned = {in_w, out_r, err_r}
    try:
        return Completed(args, *_communicate(pid, in_w, out_r, err_r, payload, timeout, owned))
    finally:
        for fd in owned:
            os.close(fd)


def _communicate(pid: int, in_w: int, out_r: int, err_r: int, payload: bytes,
                 timeout: float, owned: set[int]) -> tuple[int, str, str]:
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    if payload:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    else:
        owned.discard(in_w)
        os.close(in_w)
    open_fds = {out_r, err_r} | ({in_w} if payload else set())
    sent = 0
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise SpawnTimeout(f"timed out after {timeout:g}s")
        for fd, event in poller.poll(left * 1000):
            if fd == in_w:
                try:
                    sent += os.write(in_w, payload[sent:sent + 65536])
                except BrokenPipeError:
                    sent = len(payload)  # the program stopped reading; its exit status tells why
                if sent >= len(payload):
                    poller.unregister(in_w)
                    owned.discard(in_w)
                    os.close(in_w)
                    open_fds.discard(in_w)
            else:
                data = os.read(fd, 65536) if event & (select.POLLIN | select.POLLHUP) else b""
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
    status = _wait(pid, deadline, timeout)
    return (status, b"".join(chunks[out_r]).decode("utf-8", "replace"),
            b"".join(chunks[err_r]).decode("utf-8", "replace"))


def _wait(pid: int, deadline: float, timeout: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            _kill(pid)
            raise SpawnTimeout(f"timed out after {timeout:g}s")
        time.sleep(0.0005)  # output is closed: the child is exiting


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
