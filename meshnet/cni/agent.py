"""Optional node agent: a pool of pre-forked processes that already imported the plugin.

The runtime execs `meshnet-cni` for every pod; most of an exec'd ADD is spent importing Python
modules (see bench/cni.py). With the agent running, the exec'd plugin is a thin shim
(meshnet/cni/shim.py) that hands the request (CNI_* variables + stdin) to a warm worker over a
root-only Unix socket and prints its answer. The worker runs exactly `plugin.run`, so the result
is the same as in-process; without the agent the shim runs it in-process itself.

Workers are forked after the imports and before any thread exists (fork-safe), each handles one
request at a time, and a worker that dies is replaced.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import sys
import time

from meshnet.cni.shim import DEFAULT_SOCKET, decode_request

REQUEST_TIMEOUT = 30.0  # to read a request: the shim sends it in one go
MAX_REQUEST = 4 << 20
# struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED = struct.Struct("3i")


def _preload() -> None:
    """Everything an ADD/DEL/CHECK imports, imported once before forking."""
    import meshnet.addresses  # noqa: F401
    import meshnet.applier  # noqa: F401
    import meshnet.cni.commands  # noqa: F401
    import meshnet.compare  # noqa: F401
    import meshnet.istio_builder  # noqa: F401
    import meshnet.nft_builder  # noqa: F401
    import meshnet.parse.iptables_save  # noqa: F401
    import meshnet.render.nft  # noqa: F401
    import meshnet.render.restore  # noqa: F401


def _read_all(conn: socket.socket) -> bytes:
    conn.settimeout(REQUEST_TIMEOUT)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_REQUEST:
            raise ValueError("request too large")
        chunks.append(chunk)


def handle(conn: socket.socket) -> None:
    from meshnet.cni.plugin import run

    uid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    if uid != 0:  # the socket is 0600 already; this is the second lock on the door
        return
    env, stdin = decode_request(_read_all(conn))
    out = io.StringIO()
    code = run(io.BytesIO(stdin), out, env)
    conn.sendall(bytes([code & 0xFF]) + out.getvalue().encode())


def _worker(listener: socket.socket) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                handle(conn)
            except Exception as exc:  # a broken request: the shim sees EOF and runs it itself
                sys.stderr.write(f"meshnet-cni agent: request failed: {type(exc).__name__}: {exc}\n")


def _listen(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:
        os.unlink(path)  # a stale socket from a previous agent
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600: only root may connect
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


def _spawn(listener: socket.socket) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _worker(listener)
        finally:
            os._exit(1)
    return pid


def serve(path: str = DEFAULT_SOCKET, workers: int = 4, ready: io.TextIOBase | None = None) -> int:
    """Run until SIGTERM/SIGINT. Prints READY (to `ready`, default stdout) once accepting."""
    _preload()
    listener = _listen(path)
    children = {_spawn(listener) for _ in range(workers)}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("READY", file=ready or sys.stdout, flush=True)
    try:
        while not stopping:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid in children:
                children.discard(pid)
                children.add(_spawn(listener))
            time.sleep(0.2)
    finally:
        for pid in children:  # only our own workers, by PID
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return 0
