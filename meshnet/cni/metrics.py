"""Prometheus metrics of the node agent, served from its (single-threaded) supervisor process.

Workers are forked and must stay fork-safe, so nothing here runs threads: a worker reports each
request as one datagram on a socketpair made before forking; the supervisor folds reports into
prometheus_client metrics, answers scrapes from its own select loop, and runs the periodic
node-wide doctor in a forked child that returns a JSON summary over a pipe. The exec'd plugin
(the shim) never imports any of this.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshnet.errors import MeshnetError

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_REPORT = 4096


def report(sock: socket.socket | None, env: dict[str, str], code: int, seconds: float) -> None:
    """Worker side: one datagram per request; never blocks, never fails the request."""
    if sock is None:
        return
    data = {"command": env.get("CNI_COMMAND", "?"), "code": code, "seconds": seconds,
            "container": env.get("CNI_CONTAINERID", "")}
    try:
        sock.send(json.dumps(data).encode()[:MAX_REPORT], socket.MSG_DONTWAIT)
    except OSError:
        pass


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("meshnet_cni_requests", "CNI requests served by the agent's workers",
                                ["command", "result"], registry=r)
        self.latency = Histogram("meshnet_cni_request_duration_seconds", "Time a worker spent on one CNI request",
                                 ["command"], buckets=BUCKETS, registry=r)
        self.programmed = Gauge("meshnet_cni_pods_programmed",
                                "Pods whose interception this agent programmed (successful ADD, no DEL since)",
                                registry=r)
        self.findings = Gauge("meshnet_node_findings", "Pod namespaces with this doctor finding (last node sweep)",
                              ["kind", "severity"], registry=r)
        self.namespaces = Gauge("meshnet_node_namespaces", "Pod namespaces by doctor result (last node sweep)",
                                ["result"], registry=r)
        self.sweeps = Counter("meshnet_node_doctor_runs", "Node-wide doctor sweeps", ["result"], registry=r)
        self.sweep_seconds = Gauge("meshnet_node_doctor_duration_seconds", "Duration of the last node sweep",
                                   registry=r)
        self.sweep_time = Gauge("meshnet_node_doctor_last_run_timestamp_seconds", "End of the last node sweep",
                                registry=r)
        self.repairs = Counter("meshnet_repairs", "Pods repaired in place by the agent's repair loop, by reason",
                               ["reason"], registry=r)
        self.repair_outcomes = Counter("meshnet_repair_pods", "Repair loop outcomes per pod that needed work "
                                       "(repaired, would-repair, invalid, busy, deferred, gone, failed)",
                                       ["action", "reason"], registry=r)
        self.repair_passes = Counter("meshnet_repair_passes", "Repair loop passes over the node", ["result"],
                                     registry=r)
        for reason in ("missing", "drift", "partial"):
            self.repairs.labels(reason)
        for result in ("healthy", "findings", "not_inspected"):
            self.namespaces.labels(result)
        self._containers: set[str] = set()

    def add_report(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
            command, code, seconds = str(data["command"]), int(data["code"]), float(data["seconds"])
        except (ValueError, KeyError, TypeError):
            return
        self.requests.labels(command, "success" if code == 0 else "error").inc()
        self.latency.labels(command).observe(seconds)
        container = str(data.get("container", ""))
        if code == 0 and container:
            if command == "ADD":
                self._containers.add(container)
            elif command == "DEL":
                self._containers.discard(container)
            self.programmed.set(len(self._containers))

    def add_sweep(self, summary: dict[str, Any]) -> None:
        if "error" in summary:
            self.sweeps.labels("error").inc()
            return
        self.sweeps.labels("ok").inc()
        self.findings.clear()
        for key, n in summary["findings"].items():
            kind, severity = key.split("/", 1)
            self.findings.labels(kind, severity).set(n)
        for result, n in summary["namespaces"].items():
            self.namespaces.labels(result).set(n)
        self.sweep_seconds.set(summary["seconds"])
        self.sweep_time.set(time.time())

    def add_repair_pass(self, summary: dict[str, Any]) -> None:
        if "error" in summary:
            self.repair_passes.labels("error").inc()
            return
        self.repair_passes.labels("ok").inc()
        for row in summary.get("rows", []):
            action, reason = str(row.get("action", "")), str(row.get("reason", ""))
            if action in ("ok", "skipped"):
                continue
            self.repair_outcomes.labels(action, reason).inc()
            if action == "repaired":
                self.repairs.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def sweep_summary(jobs: int = 4, timeout: float = 30.0) -> dict[str, Any]:
    """One node-wide doctor run, reduced to counts (what the gauges show)."""
    from meshnet.apply.netns import Netns
    from meshnet.diagnose.node import discover, doctor_all

    t0 = time.monotonic()
    rows = doctor_all(discover(), Netns.resolve(), jobs=jobs, timeout=timeout)
    findings: dict[str, int] = {}
    names = {0: "healthy", 1: "findings", 2: "not_inspected"}
    namespaces = dict.fromkeys(names.values(), 0)
    for row in rows:
        namespaces[names.get(row.exit_code, "not_inspected")] += 1
        if row.report is None or row.exit_code == 0:
            continue
        for key in {f"{f.kind}/{f.severity}" for f in row.report.problems}:
            findings[key] = findings.get(key, 0) + 1
    return {"findings": findings, "namespaces": namespaces, "seconds": time.monotonic() - t0}


class Sweeper:
    """Runs `work` (default: sweep_summary) in a forked child every `interval` seconds and hands its
    JSON-able result to `deliver` (default: the metrics' add_sweep); the supervisor stays single-threaded."""

    def __init__(self, interval: float, metrics: AgentMetrics | None,
                 work: Callable[[], dict[str, Any]] | None = None,
                 deliver: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.interval = interval
        self.metrics = metrics
        self.work = work or sweep_summary
        self.deliver = deliver or (metrics.add_sweep if metrics is not None else (lambda summary: None))
        self.pid: int | None = None
        self.fd: int | None = None
        self.started = 0.0
        self.next = time.monotonic()  # first sweep at once
        self.buf = b""

    def tick(self) -> None:
        now = time.monotonic()
        if self.pid is not None and now - self.started > max(self.interval, 60.0):
            self._reap(kill=True)
            self.deliver({"error": "timeout"})
        if self.pid is None and self.interval > 0 and now >= self.next:
            self._start()

    def _start(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                out = json.dumps(self.work()).encode()
            except Exception as exc:  # noqa: BLE001 - reported as a failed sweep
                out, code = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), 1
            try:
                view = memoryview(out)
                while view:
                    view = view[os.write(w, view):]
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.fd, self.started, self.buf = pid, r, time.monotonic(), b""

    def readable(self) -> None:
        assert self.fd is not None
        chunk = os.read(self.fd, 65536)
        if chunk:
            self.buf += chunk
            return
        data = self.buf
        self._reap(kill=False)
        try:
            summary = json.loads(data)
        except ValueError:
            summary = {"error": "bad summary"}
        self.deliver(summary)

    def _reap(self, kill: bool) -> None:
        if self.pid is not None:
            if kill:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        if self.fd is not None:
            os.close(self.fd)
        self.pid, self.fd = None, None
        self.next = time.monotonic() + self.interval

    def stop(self) -> None:
        if self.pid is not None:
            self._reap(kill=True)


def parse_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid metrics address {text!r}: expected PORT or HOST:PORT")
    return host, int(port)


def http_listener(address: str) -> socket.socket:
    host, port = parse_address(address)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
    except OSError as exc:
        s.close()
        raise MeshnetError(f"metrics address {address}: {exc.strerror or exc}") from None
    return s


def serve_scrape(listener: socket.socket, metrics: AgentMetrics) -> None:
    """Answer one HTTP request: GET /metrics (or /) with the exposition, anything else 404."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(2.0)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
                body, status, ctype = metrics.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (body if parts[:1] != [b"HEAD"] else b""))
        except OSError:
            pass
