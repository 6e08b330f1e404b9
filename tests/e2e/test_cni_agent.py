"""The optional node agent: the exec'd plugin forwards to warm workers, and works without them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cni_helpers import SIDECAR, CniNode, build_cnirun, build_plugin, interception_state, save
from harness.topology import is_root

from meshnet.cni.shim import ask_agent, decode_request, encode_request

REPO = Path(__file__).resolve().parents[2]


def test_request_encoding_round_trip() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=x=y", "CNI_NETNS": "/run/netns/p"}
    stdin = b'{"cniVersion": "1.0.0", "x": "\x00\xff"}'
    assert decode_request(encode_request(env, stdin)) == (env, stdin)
    with pytest.raises(ValueError):
        decode_request(b"GET / HTTP/1.1\r\n")


def test_no_agent_means_in_process(tmp_path: Path) -> None:
    assert ask_agent(str(tmp_path / "none.sock"), encode_request({}, b"{}")) is None


class Agent:
    """`meshnet cni agent` as our own child process; stopped by PID."""

    def __init__(self, socket_path: Path, workers: int = 2) -> None:
        self.socket = socket_path
        self.proc = subprocess.Popen([sys.executable, "-m", "meshnet.cli.main", "cni", "agent", "--socket",
                                      str(socket_path), "--workers", str(workers)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r}")

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    if not is_root():
        pytest.skip("needs root (the agent socket is root-only)")
    a = Agent(tmp_path / "run" / "agent.sock")
    try:
        yield a
    finally:
        a.stop()


@pytest.mark.netns
@contextlib.contextmanager
def public_dir_beside(path: Path) -> Iterator[Path]:
    """A 0755 directory on the filesystem of `path` (so it can hold a hard link to it) that uid 1337
    can traverse, wherever the suite runs from (a clone in a 0700 directory included)."""
    for base in ("/tmp", "/run", "/dev/shm"):
        if os.path.isdir(base) and os.stat(base).st_dev == path.stat().st_dev:
            d = Path(tempfile.mkdtemp(prefix="mn-agent-", dir=base))
            break
    else:
        raise AssertionError(f"no world-traversable directory on the filesystem of {path}")
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


UNPRIVILEGED_PROBE = """
import _socket, sys
sys.path.insert(0, sys.argv[1])
from mn_shim import ask_agent, encode_request
def connect(path):
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    except PermissionError:
        return "EACCES"
    finally:
        s.close()
print(connect(sys.argv[2]), connect(sys.argv[3]), ask_agent(sys.argv[2], encode_request({}, b"{}")))
"""


def test_socket_is_root_only_and_removed_on_stop(agent: Agent) -> None:
    assert agent.socket.stat().st_mode & 0o777 == 0o600
    assert agent.socket.parent.stat().st_mode & 0o777 == 0o700
    # A non-root process cannot reach it, so it would run the plugin itself (and fail for lack of rights).
    # uid 1337 can read neither this clone (it may sit in a 0700 directory) nor the socket's 0700
    # directory: it runs a copy of the shim from a public directory and reaches the agent's socket
    # through a hard link there (the same inode and mode), so only the socket's own 0600 is tested.
    # The control socket (0666, same directory) shows the process could connect if the mode let it.
    with public_dir_beside(agent.socket) as pub:
        shutil.copy(REPO / "meshnet" / "cni" / "shim.py", pub / "mn_shim.py")
        (pub / "mn_shim.py").chmod(0o644)
        link = pub / "agent.sock"
        os.link(agent.socket, link)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control.bind(str(pub / "open.sock"))
            control.listen(1)
            (pub / "open.sock").chmod(0o666)
            cp = subprocess.run(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "/usr/bin/python3",
                                 "-I", "-S", "-c", UNPRIVILEGED_PROBE, str(pub), str(link), str(pub / "open.sock")],
                                capture_output=True, text=True, timeout=30)
        finally:
            control.close()
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["EACCES", "connected", "None"], (cp.stdout, cp.stderr)
    agent.stop()
    assert not agent.socket.exists()


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    return build_cnirun(), build_plugin(tmp_path_factory.mktemp("cni-bin")).parent


def served_by(node: CniNode) -> list[int]:
    return [json.loads(line)["pid"] for line in node.log_file.read_text().splitlines()]


@pytest.mark.netns
def test_runtime_requests_go_through_the_agent_and_fall_back_without_it(agent: Agent,
                                                                       tools: tuple[Path, Path]) -> None:
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}, agent_socket=str(agent.socket)) as node:
        workers = agent.workers()
        pod = node.new_pod("warm")
        for op in ("add", "check"):
            out = node.run(op, pod, SIDECAR)
            assert out.ok, out.stderr
        assert "ISTIO_OUTPUT" in save(pod.ns)
        assert set(served_by(node)) <= workers  # every log line was written by an agent worker
        assert node.delete(pod, SIDECAR).ok
        assert interception_state(pod.ns) == []

        # A worker dies: the agent replaces it, and requests keep working.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while victim in agent.workers() or len(agent.workers()) < 2:
            assert time.monotonic() < deadline, "the agent did not replace its worker"
            time.sleep(0.1)
        pod2 = node.new_pod("respawn")
        assert node.add(pod2, SIDECAR).ok
        assert served_by(node)[-1] in agent.workers()

        # No agent: the exec'd plugin does the same work itself.
        all_workers = workers | agent.workers()
        agent.stop()
        pod3 = node.new_pod("cold")
        out = node.add(pod3, SIDECAR)
        assert out.ok, out.stderr
        assert "ISTIO_OUTPUT" in save(pod3.ns)
        assert served_by(node)[-1] not in all_workers


@pytest.mark.netns
def test_agent_errors_are_the_plugins_errors(agent: Agent, tools: tuple[Path, Path]) -> None:
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}, agent_socket=str(agent.socket)) as node:
        pod = node.new_pod("bad")
        assert node.add(pod, {}).ok  # an address from the bridge; no sidecar yet
        bad: dict[str, Any] = {**SIDECAR, "traffic.sidecar.istio.io/excludeInboundPorts": "eighty"}
        raw = node.plugin_only("ADD", pod, bad, prev={"cniVersion": "1.0.0"})
        err = json.loads(raw.stdout)
        assert raw.returncode == 1 and err["code"] == 100 and "eighty" in err["msg"]
        assert interception_state(pod.ns) == []
