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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REQUEST_TIMEOUT = 30.0  # to read a request: the shim sends it in one go
MAX_REQUEST = 4 << 20
# struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED = struct.Struct("3i")


def _preload() -> None:
    """Everything an ADD/DEL/CHECK imports, imported once before forking."""
    import meshnet.apply.applier  # noqa: F401
    import meshnet.cni.commands  # noqa: F401
    import meshnet.plan.istio_builder  # noqa: F401
    import meshnet.plan.nft_builder  # noqa: F401
    import meshnet.plan.render_nft  # noqa: F401
    import meshnet.plan.render_restore  # noqa: F401
    import meshnet.state.addresses  # noqa: F401
    import meshnet.state.compare  # noqa: F401
    import meshnet.state.parse_save  # noqa: F401


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


def handle(conn: socket.socket, reports: socket.socket | None = None) -> None:
    from meshnet.cni.plugin import run

    uid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    if uid != 0:  # the socket is 0600 already; this is the second lock on the door
        return
    env, stdin = decode_request(_read_all(conn))
    out = io.StringIO()
    t0 = time.monotonic()
    code = run(io.BytesIO(stdin), out, env)
    conn.sendall(bytes([code & 0xFF]) + out.getvalue().encode())
    if reports is not None:
        from meshnet.cni.metrics import report

        report(reports, env, code, time.monotonic() - t0)


def _worker(listener: socket.socket, reports: socket.socket | None = None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                handle(conn, reports)
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


def _spawn(listener: socket.socket, reports: socket.socket | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _worker(listener, reports)
        finally:
            os._exit(1)
    return pid


def serve(path: str = DEFAULT_SOCKET, workers: int = 4, ready: io.TextIOBase | None = None,
          metrics_address: str | None = None, doctor_interval: float = 0.0, ambient_conflist: str = "",
          repair: RepairOptions | None = None, ambient_sync: tuple[str, float] | None = None) -> int:
    """Run until SIGTERM/SIGINT. Prints READY (to `ready`, default stdout) once accepting.

    With `metrics_address` (PORT or HOST:PORT) the supervisor serves Prometheus metrics there and,
    every `doctor_interval` seconds (0: never), sweeps the node with doctor in a forked child.
    With `repair`, every `repair.interval` seconds a forked child repairs the node's meshed pods in
    place (meshnet.apply.repair), one log line per repair on stderr, counted in the metrics.
    With `ambient_sync` (CRI endpoint, seconds) and `ambient_conflist`, a forked child enrolls and
    un-enrolls ambient pods by their sandbox labels that often (meshnet.ambient.cni.sync_with_runtime).
    """
    _preload()
    if ambient_conflist:  # ambient node agent: reconcile every recorded pod before serving new ones
        from meshnet.ambient import cni as ambient

        ambient.IN_AGENT = True  # the workers forked below program ambient pods
        for line in ambient.agent_start(ambient_conflist):
            sys.stderr.write(f"meshnet-cni agent: ambient: {line}\n")
    metrics = scrape = sweeper = repairer = None
    worker_end = supervisor_end = None
    if metrics_address is not None:
        from meshnet.cni.metrics import AgentMetrics, Sweeper, http_listener

        metrics = AgentMetrics()
        scrape = http_listener(metrics_address)
        supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        sweeper = Sweeper(doctor_interval, metrics)
    if repair is not None and repair.interval > 0:
        from meshnet.cni.metrics import Sweeper

        deliver = metrics.add_repair_pass if metrics is not None else _log_failed_pass
        repairer = Sweeper(repair.interval, metrics, work=repair.run_pass, deliver=deliver)
    syncer = _ambient_syncer(ambient_conflist, ambient_sync)
    listener = _listen(path)
    children = {_spawn(listener, worker_end) for _ in range(workers)}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("READY", file=ready or sys.stdout, flush=True)
    try:
        while not stopping:
            if syncer is not None:
                _poll(syncer)
            if metrics is not None:
                _metrics_step(metrics, scrape, supervisor_end, sweeper, repairer)
            elif repairer is not None:
                _repair_step(repairer)
            else:
                time.sleep(0.2)
            for pid in list(children):  # only our workers: the sweeper reaps its own child
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done == pid:
                    children.discard(pid)
                    children.add(_spawn(listener, worker_end))
    finally:
        for periodic in (sweeper, repairer, syncer):
            if periodic is not None:
                periodic.stop()
        for s in (scrape, supervisor_end, worker_end):
            if s is not None:
                s.close()
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


def _metrics_step(metrics: object, scrape: socket.socket | None, reports: socket.socket | None,
                  sweeper: object, repairer: object = None) -> None:
    """One turn of the supervisor loop: scrapes, worker reports, the sweepers' pipes (0.2 s at most)."""
    import select

    from meshnet.cni.metrics import AgentMetrics, Sweeper, serve_scrape

    assert isinstance(metrics, AgentMetrics) and isinstance(sweeper, Sweeper)
    assert scrape is not None and reports is not None
    periodic = [p for p in (sweeper, repairer) if isinstance(p, Sweeper)]
    for p in periodic:
        p.tick()
    fds: list[socket.socket | int] = [scrape, reports, *(p.fd for p in periodic if p.fd is not None)]
    try:
        readable, _, _ = select.select(fds, [], [], 0.2)
    except InterruptedError:
        return
    for r in readable:
        if r is scrape:
            serve_scrape(scrape, metrics)
        elif r is reports:
            while True:
                try:
                    metrics.add_report(reports.recv(65536, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    break
        else:
            next(p for p in periodic if p.fd == r).readable()


def _ambient_syncer(conflist: str, sync: tuple[str, float] | None) -> Any:
    """The periodic runtime pass of the ambient agent (a Sweeper: forked child, result on a pipe)."""
    if not conflist or sync is None or sync[1] <= 0:
        return None
    from meshnet.cni.metrics import Sweeper

    endpoint, interval = sync

    def work() -> dict[str, object]:  # in the forked child: its lines go straight to the agent's stderr
        from meshnet.ambient.runtime_sync import sync_with_runtime

        lines = sync_with_runtime(conflist, endpoint)
        for line in lines:
            sys.stderr.write(f"meshnet-cni agent: ambient: {line}\n")
        sys.stderr.flush()
        return {"changed": len(lines)}

    def deliver(summary: dict[str, Any]) -> None:
        if "error" in summary:
            sys.stderr.write(f"meshnet-cni agent: ambient: runtime pass failed: {summary['error']}\n")
        sys.stderr.flush()

    return Sweeper(interval, None, work=work, deliver=deliver)


def _poll(periodic: Any) -> None:
    """Start the periodic child when due; read its pipe if it has something (never blocks)."""
    import select

    periodic.tick()
    if periodic.fd is not None and select.select([periodic.fd], [], [], 0)[0]:
        periodic.readable()


def _repair_step(repairer: object) -> None:
    """The supervisor loop without metrics: only the repair child's pipe (0.2 s at most)."""
    import select

    from meshnet.cni.metrics import Sweeper

    assert isinstance(repairer, Sweeper)
    repairer.tick()
    if repairer.fd is None:
        time.sleep(0.2)
        return
    try:
        readable, _, _ = select.select([repairer.fd], [], [], 0.2)
    except InterruptedError:
        return
    if readable:
        repairer.readable()


def _log_failed_pass(summary: dict[str, object]) -> None:
    if "error" in summary:
        sys.stderr.write(f"repair: pass failed: {summary['error']}\n")


class RepairOptions:
    """The agent's repair loop (`meshnet cni agent --repair-interval S`)."""

    def __init__(self, interval: float, cri: str, max_repairs: int, conflist: str | None = None,
                 conf_dir: str | None = None) -> None:
        self.interval, self.cri, self.max_repairs = interval, cri, max_repairs
        self.conflist, self.conf_dir = conflist, conf_dir

    def run_pass(self) -> dict[str, object]:
        """In the forked child: one pass; rows go back to the supervisor for the counters."""
        from meshnet.apply.repair import load_config, repair_all
        from meshnet.cri import list_sandboxes, sandbox_ready

        config = load_config(self.conflist, self.conf_dir)
        rows = repair_all(list_sandboxes(self.cri), config, max_repairs=self.max_repairs,
                          log=lambda line: sys.stderr.write(f"repair: {line}\n"),
                          still_ready=lambda sandbox: sandbox_ready(self.cri, sandbox))
        sys.stderr.flush()
        return {"rows": [r.to_dict() for r in rows]}
