"""Node-wide: every pod network namespace on the node, each diagnosed in parallel with a time bound.

Namespaces come from the runtimes' netns directories and from /proc/*/ns/net, deduplicated by
(st_dev, st_ino); the caller's own namespace (the host's, on a node) is left out unless asked.
With a CRI endpoint, sandboxes add pod name, namespace and whether the pod is meant to be meshed.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from meshnet.apply.netns import Netns, NetnsError
from meshnet.diagnose.bundle.source import Recorder
from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from meshnet.diagnose.doctor import Report

# Where runtimes keep named pod namespaces: iproute2 / CRI-O / containerd (cni-*), containerd's state
# dir (netns_mounts_under_state_dir), docker.
NETNS_DIRS = ("/run/netns", "/var/run/netns", "/run/containerd/io.containerd.grpc.v1.cri/netns",
              "/run/docker/netns", "/var/run/docker/netns")
DEFAULT_TIMEOUT = 30.0
DEFAULT_JOBS = 4
SIDECAR_ANNOTATION = "sidecar.istio.io/status"


@dataclass
class Target:
    netns: Netns
    key: tuple[int, int]  # (st_dev, st_ino) of the namespace
    pod: dict[str, Any] = field(default_factory=dict)  # from CRI: id, name, namespace, uid, meshed

    @property
    def name(self) -> str:
        if self.pod.get("name"):
            return f"{self.pod.get('namespace', '')}/{self.pod['name']}"
        return self.netns.label


def _key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def discover(dirs: Sequence[str] = NETNS_DIRS, include_host: bool = False, proc: bool = True,
             extra: Iterable[str] = ()) -> list[Target]:
    """Every distinct network namespace reachable by name or by a process (read-only)."""
    host = _key("/proc/self/ns/net")
    seen: dict[tuple[int, int], Target] = {}

    def add(path: str, label: str) -> None:
        key = _key(path)
        if key is None or key in seen or (key == host and not include_host):
            return
        try:
            ns = Netns.resolve(netns=path)
        except NetnsError:
            return  # a stale bind-mount file, or not a network namespace
        seen[key] = Target(Netns(path=ns.path, label=label), key)

    for path in extra:
        add(path, path)
    for d in dict.fromkeys(os.path.realpath(d) for d in dirs):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            add(os.path.join(d, name), name if d == os.path.realpath("/run/netns") else os.path.join(d, name))
    if proc:
        pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
        for pid in pids:
            add(f"/proc/{pid}/ns/net", f"pid {pid} ({_comm(pid)})")
    return list(seen.values())


def attach_cri(targets: list[Target], sandboxes: list[dict[str, Any]]) -> list[Target]:
    """Name the targets after their sandboxes; add sandboxes whose netns was not found otherwise."""
    by_key = {t.key: t for t in targets}
    for sb in sandboxes:
        path = sb.get("netns") or (f"/proc/{sb['pid']}/ns/net" if sb.get("pid") else None)
        key = _key(path) if path else None
        if path is None or key is None:
            continue
        meta = {k: sb.get(k) for k in ("id", "name", "namespace", "uid")}
        meta["expect_mesh"] = SIDECAR_ANNOTATION in (sb.get("annotations") or {})
        if key in by_key:
            by_key[key].pod = meta
            continue
        try:
            ns = Netns.resolve(netns=path)
        except NetnsError:
            continue
        label = path if path.startswith("/proc/") else os.path.basename(path)  # cni-<uuid>, as runtimes name them
        t = Target(Netns(path=ns.path, label=label), key, meta)
        targets.append(t)
        by_key[key] = t
    return targets


class MemoHost(Recorder):
    """The host namespace, read once for all pods (backend comparison), thread-safe."""

    def __init__(self, netns: Netns) -> None:
        super().__init__(netns)
        self._lock = threading.Lock()

    def run(self, argv: Sequence[str], **kw: Any) -> Any:
        with self._lock:
            got = self.commands.get(tuple(argv))
            if got is None or kw.get("input") is not None:
                return super().run(argv, **kw)
        from meshnet.diagnose.bundle.source import _checked
        from meshnet.lite.spawn import Completed

        return _checked(self.netns.label, argv, Completed(list(argv), *got), kw.get("check", True))

    def read_proc_net(self, name: str) -> str:
        with self._lock:
            if name in self.proc_net:
                text = self.proc_net[name]
                if text is None:
                    raise FileNotFoundError(name)
                return text
            return super().read_proc_net(name)


@dataclass
class Row:
    target: Target
    exit_code: int
    report: Report | None = None
    error: str | None = None

    @property
    def worst(self) -> str:
        if self.error is not None:
            return f"could not inspect: {self.error}"
        assert self.report is not None
        if not self.report.problems:
            return "healthy"
        f = self.report.problems[0]
        if self.exit_code == 0:
            return "unmeshed (no Istio rules)"
        return f"{f.severity} {f.kind}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod": self.target.pod.get("name"), "namespace": self.target.pod.get("namespace"),
                               "sandbox": self.target.pod.get("id"), "netns": self.target.netns.label,
                               "path": self.target.netns.path, "exit": self.exit_code, "worst": self.worst}
        if self.report is not None:
            out.update(backends=self.report.backends, mode=self.report.mode,
                       findings=[f.to_dict() for f in self.report.findings], notes=self.report.notes)
        if self.error is not None:
            out["error"] = self.error
        return out


def judge(target: Target, report: Report) -> int:
    """Exit code of one pod. A namespace without any Istio rule is a finding only when the pod is known
    to be meshed (CRI says it has the sidecar): most namespaces on a node are simply not in the mesh."""
    kinds = {f.kind for f in report.problems}
    if kinds == {"no-interception-rules"} and not target.pod.get("expect_mesh"):
        return 0
    return report.exit_code


def doctor_all(targets: list[Target], host: Netns | None, jobs: int = DEFAULT_JOBS,
               timeout: float = DEFAULT_TIMEOUT) -> list[Row]:
    from meshnet.diagnose.doctor import EXIT_CANNOT_INSPECT, diagnose

    memo = MemoHost(host) if host is not None else None

    def one(t: Target) -> Row:
        try:
            report = diagnose(t.netns, None, memo)
        except (MeshnetError, OSError) as exc:
            return Row(t, EXIT_CANNOT_INSPECT, error=str(exc))
        return Row(t, judge(t, report), report)

    def failed(t: Target, reason: str) -> Row:
        return Row(t, EXIT_CANNOT_INSPECT, error=reason)

    return bounded(targets, one, failed, jobs, timeout)


def bounded(items: Sequence[Any], fn: Callable[[Any], Any], on_fail: Callable[[Any, str], Any], jobs: int,
            timeout: float) -> list[Any]:
    """fn over items on at most `jobs` threads; an item still running after `timeout` seconds gets
    on_fail(item, reason) and its thread is abandoned (daemon: it cannot hold up the exit), freeing its slot."""
    results: list[Any] = [None] * len(items)
    done = [False] * len(items)
    started: dict[int, float] = {}
    cond = threading.Condition()

    def work(i: int) -> None:
        try:
            value = fn(items[i])
        except Exception as exc:  # noqa: BLE001 - reported per item, never kills the sweep
            value = on_fail(items[i], f"{type(exc).__name__}: {exc}")
        with cond:
            if not done[i]:
                results[i], done[i] = value, True
                started.pop(i, None)
            cond.notify_all()

    pending = list(range(len(items)))
    with cond:
        while pending or started:
            while pending and len(started) < max(1, jobs):
                i = pending.pop(0)
                started[i] = time.monotonic()
                threading.Thread(target=work, args=(i,), daemon=True, name=f"meshnet-node-{i}").start()
            now = time.monotonic()
            for i, t0 in list(started.items()):
                if now - t0 >= timeout:
                    results[i], done[i] = on_fail(items[i], f"timed out after {timeout:g}s"), True
                    del started[i]
            if started:
                next_deadline = min(started.values()) + timeout
                cond.wait(max(0.01, next_deadline - time.monotonic()))
    return results


def worst_exit(rows: Iterable[Row]) -> int:
    return max((r.exit_code for r in rows), default=0)


def table(rows: Sequence[Row]) -> list[str]:
    head = ("POD", "NETNS", "BACKEND", "MODE", "WORST FINDING")
    data = [(r.target.name if r.target.pod.get("name") else "-", r.target.netns.label,
             ",".join(r.report.backends) if r.report and r.report.backends else "-",
             (r.report.mode if r.report else None) or "-", r.worst) for r in rows]
    widths = [max(len(head[i]), *(len(d[i]) for d in data)) if data else len(head[i]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return [fmt.format(*head), *(fmt.format(*d) for d in data)]
