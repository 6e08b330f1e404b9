"""The ambient node agent under a real containerd (tests/harness/crinode), issue 13 "node agent".

meshnet-cni hands enrolled pods to `meshnet cni agent --ambient-conflist`, which programs each
pod's namespace and the node's probe set (the node namespace is crinode's, made for this test).
Enrolment by labels, as istio-cni: the sandboxes are created with pod labels (kubelet copies them onto
the sandbox); no API here, so the namespace `mesh` is the config's fallback list. A pod in `mesh` is
programmed at ADD; a pod labelled ambient elsewhere, and a pod in `mesh` labelled none, are enrolled /
un-enrolled by the agent's runtime pass (`--ambient-interval`, the labels read over CRI: containerd
does not know the sandbox while ADD runs). An annotation enrolls nothing. Without the agent, an enrolled
pod does not start. A restarted agent reconciles the pods it recorded (here: rules removed while it was
down come back) before it serves new pods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cri_bare_node import REPO, Node
from harness.topology import is_root

from meshnet.ambient.apply import ambient_drift
from meshnet.ambient.spec import AmbientSpec
from meshnet.apply.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]
SPEC = AmbientSpec(redirect_dns=True)


class Agent:
    """`meshnet cni agent` in the node's namespace, our own child, stopped by PID."""

    def __init__(self, node: Node, conflist: Path, socket_path: Path) -> None:
        argv = ["nsenter", f"--net=/run/netns/{node.netns}", sys.executable, "-m", "meshnet.cli.main", "cni", "agent",
                "--socket", str(socket_path), "--workers", "2", "--ambient-conflist", str(conflist),
                "--ambient-interval", "0.5", "--cri", f"unix://{node.base}/run/containerd.sock"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # nsenter execs the agent: same PID
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def ambient_node() -> Iterator[tuple[Node, Path, Path]]:
    if not is_root():
        pytest.skip("needs root (containerd, namespaces); CI runs as root")
    node = Node()
    sock = node.base / "run" / "agent.sock"
    node.env["MESHNET_CNI_AGENT_SOCKET"] = str(sock)
    plugin = {"type": "meshnet-cni", "backend": "iptables-nft", "log_file": str(node.base / "log" / "meshnet-cni.log"),
              "capabilities": {"io.kubernetes.cri.pod-annotations": True},
              "ambient": {"redirect_dns": True, "namespaces": ["mesh"], "state_dir": str(node.base / "ambient"),
                          "host_probes": True}}
    try:
        node.up(plugin)
        yield node, node.base / "cni" / "net.d" / "10-mn.conflist", sock
    finally:
        node.down()


def _pod_ns(pod: dict[str, Any]) -> Netns:
    return Netns.resolve(pod["netns"])


def _probe_set(node: Node) -> str:
    return subprocess.run(["ip", "netns", "exec", node.netns, "ipset", "list", "istio-inpod-probes-v4"],
                          capture_output=True, text=True, timeout=30).stdout


def _run(node: Node, name: str, namespace: str, annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = ["cri", "run", "--name", name, "--namespace", namespace]
    for k, v in (annotations or {}).items():
        args += ["-a", f"{k}={v}"]
    for k, v in (labels or {}).items():
        args += ["-l", f"{k}={v}"]
    return node.crinode(*args)


def _pod(node: Node, name: str, namespace: str, annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    cp = _run(node, name, namespace, annotations, labels)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    return json.loads(cp.stdout)


def _eventually(check: Any, what: str, timeout: float = 60.0) -> None:
    """Bounded wait for the agent's runtime pass (every 0.5 s; generous for a busy machine)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.25)


def test_agent_programs_enrolled_pods_and_reconciles_after_restart(ambient_node: tuple[Node, Path, Path]) -> None:
    node, conflist, sock = ambient_node
    agent = Agent(node, conflist, sock)
    try:
        a = _pod(node, "a-0", "mesh")  # namespace enrolled (config fallback): programmed at ADD
        assert ambient_drift(_pod_ns(a), SPEC) == []
        plain = _pod(node, "d-0", "plain", labels={"app": "web"})
        annotated = _pod(node, "g-0", "plain", annotations={"istio.io/dataplane-mode": "ambient"})
        c = _pod(node, "c-0", "mesh", labels={"istio.io/dataplane-mode": "none"})  # opts out by label
        b = _pod(node, "b-0", "plain", annotations={"ambient.istio.io/bypass-inbound-capture": "true"},
                 labels={"istio.io/dataplane-mode": "ambient"})  # enrolled by its own label
        b_spec = SPEC.with_changes(ingress_mode=True)
        _eventually(lambda: ambient_drift(_pod_ns(b), b_spec) == [], "pod label ambient enrolls b-0")
        _eventually(lambda: ambient_drift(_pod_ns(c), SPEC) == ["~ no ambient rules installed"],
                    "pod label none un-enrolls c-0")
        for pod in (plain, annotated):  # the passes that saw b and c saw these too
            assert ambient_drift(_pod_ns(pod), SPEC) == ["~ no ambient rules installed"]
        members = _probe_set(node)
        assert a["ip"] in members and b["ip"] in members and c["ip"] not in members
        # The node side: the probe SNAT rule in the node's namespace.
        save = subprocess.run(["ip", "netns", "exec", node.netns, "iptables-nft-save", "-t", "nat"],
                              capture_output=True, text=True, timeout=30).stdout
        assert "-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst " \
               "-j SNAT --to-source 169.254.7.127" in save
    finally:
        first_log = agent.stop()
    assert "ambient: mesh/c-0: un-enrolled (pod label istio.io/dataplane-mode=none)" in first_log, first_log
    assert "ambient: plain/b-0: enrolled (pod label istio.io/dataplane-mode=ambient)" in first_log, first_log

    # No agent: an enrolled pod does not start (no pod may run without its redirection) ...
    out = _run(node, "e-0", "mesh")
    assert out.returncode != 0 and "node agent" in out.stdout + out.stderr, out
    # ... and pod a's rules are lost while the agent is down.
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "cleanup", "--netns", a["netns"]],
                        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cp.returncode == 0 and ambient_drift(_pod_ns(a), SPEC) == ["~ no ambient rules installed"]

    agent = Agent(node, conflist, sock)  # restart: every recorded pod reconciled before serving
    try:
        assert ambient_drift(_pod_ns(a), SPEC) == []
        assert ambient_drift(_pod_ns(b), SPEC.with_changes(ingress_mode=True)) == []
        f = _pod(node, "f-0", "mesh", {"ambient.istio.io/dns-capture": "false"})
        assert ambient_drift(_pod_ns(f), SPEC.with_changes(dns_proxy="disabled")) == []
        # DEL: the pod's record and its probe-set entry go with it.
        for step in ("stop", "rm"):
            assert node.crinode("cri", step, a["id"]).returncode == 0
        assert a["ip"] not in _probe_set(node) and f["ip"] in _probe_set(node)
        records = sorted(p.name for p in (node.base / "ambient").glob("*.json"))
        assert records == sorted(f"{p['id']}.json" for p in (b, f)), records
    finally:
        log = agent.stop()
    assert "ambient: mesh/a-0: reconciled" in log or "ambient: mesh/a-0: applied" in log, log
