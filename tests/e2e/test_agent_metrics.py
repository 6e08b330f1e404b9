"""The node agent's Prometheus endpoint: real ADD/DEL through the agent's workers move the counters,
histograms and the programmed-pods gauge; the periodic node-wide doctor shows findings by kind.

The agent runs inside a throwaway mn- namespace, so its metrics port is there (scraped through a
socket made in that namespace), never on the host.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cni_helpers import SIDECAR, CniNode, build_cnirun, build_plugin
from harness.topology import Topology, is_root

from meshnet.apply.netns import Netns

pytestmark = [pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
PORT = 15099


def scrape(ns: Netns, path: str = "/metrics") -> tuple[int, str]:
    s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(10)
        s.connect(("127.0.0.1", PORT))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample of the exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


class MetricsAgent:
    def __init__(self, topo: Topology, socket_path: Path, interval: float) -> None:
        self.ns = topo.pod
        self.proc = topo.spawn(topo.pod, [sys.executable, "-m", "meshnet.cli.main", "cni", "agent", "--socket",
                                          str(socket_path), "--workers", "2", "--metrics-port", f"127.0.0.1:{PORT}",
                                          "--doctor-interval", str(interval)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline().strip()
        assert line == "READY", f"agent did not start: {line!r} {self.proc.stderr.read() if line == '' else ''}"
        self.socket = socket_path

    def metrics(self) -> str:
        code, body = scrape(self.ns)
        assert code == 200
        return body


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[MetricsAgent]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    with Topology(ipv6=False) as topo:
        yield MetricsAgent(topo, tmp_path / "run" / "agent.sock", interval=1.0)


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    return build_cnirun(), build_plugin(tmp_path_factory.mktemp("cni-bin")).parent


def wait_for(agent: MetricsAgent, cond: Any, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = agent.metrics()
        if cond(text):
            return text
        assert time.monotonic() < deadline, f"metrics never satisfied the condition:\n{text}"
        time.sleep(0.2)


def test_add_del_move_the_counters_and_the_sweep_reports_findings(agent: MetricsAgent,
                                                                   tools: tuple[Path, Path]) -> None:
    before = agent.metrics()
    assert sample(before, "meshnet_cni_requests_total", command="ADD", result="success") == 0
    assert scrape(agent.ns, "/nope")[0] == 404
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}, agent_socket=str(agent.socket)) as node:
        pods = [node.new_pod(f"m{i}") for i in range(3)]
        for pod in pods:
            out = node.add(pod, SIDECAR)
            assert out.ok, out.stderr
        assert node.delete(pods[0], SIDECAR).ok
        bad = {**SIDECAR, "traffic.sidecar.istio.io/excludeInboundPorts": "eighty"}
        assert not node.add(node.new_pod("bad"), bad).ok

        text = wait_for(agent, lambda t: sample(t, "meshnet_cni_requests_total", command="DEL", result="success") >= 1)
        assert sample(text, "meshnet_cni_requests_total", command="ADD", result="success") == 3
        assert sample(text, "meshnet_cni_requests_total", command="ADD", result="error") == 1
        assert sample(text, "meshnet_cni_request_duration_seconds_count", command="ADD") == 4
        assert sample(text, "meshnet_cni_request_duration_seconds_sum", command="ADD") > 0
        assert sample(text, "meshnet_cni_request_duration_seconds_bucket", command="ADD", le="+Inf") == 4
        assert sample(text, "meshnet_cni_pods_programmed") == 2

        # The sweep sees the programmed pods; nothing listens on their capture ports.
        text = wait_for(agent, lambda t: sample(t, "meshnet_node_findings", kind="proxy-not-listening",
                                                severity="critical") >= 2)
        assert sample(text, "meshnet_node_doctor_runs_total", result="ok") >= 1
        assert sample(text, "meshnet_node_namespaces", result="findings") >= 2
        assert sample(text, "meshnet_node_doctor_last_run_timestamp_seconds") > 0


def test_bad_metrics_address_is_one_line(tmp_path: Path) -> None:
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "cni", "agent", "--socket",
                         str(tmp_path / "a.sock"), "--metrics-port", "http"], capture_output=True, text=True,
                        timeout=60, cwd=REPO)
    assert cp.returncode != 0 and "invalid metrics address" in cp.stderr and "Traceback" not in cp.stderr
    assert not (tmp_path / "a.sock").exists()


def test_the_daemonset_scrapes_the_agent() -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / "meshnet-cni-daemonset.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    tmpl = ds["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    agent = next(c for c in tmpl["spec"]["containers"] if c["name"] == "agent")
    port = agent["command"][agent["command"].index("--metrics-port") + 1]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert ann["prometheus.io/port"] == port.rsplit(":", 1)[-1]
    assert {"containerPort": int(ann["prometheus.io/port"]), "name": "metrics"}.items() <= \
        next(p for p in agent["ports"]).items()
    json.dumps(ann)  # plain strings only
