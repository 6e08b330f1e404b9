"""`meshnet doctor --all --cri`: real pod sandboxes of containerd's CRI plugin (../shared/tools/crinode),
named by ListPodSandbox + PodSandboxStatus; the CNI chain is bridge (isGateway false) + meshnet-cni.

Also checks that meshnet's CRI subset proto has the CRI's own field numbers (against the full
api.proto crinode builds its client from)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crinode_lock
import pytest
from harness.cni_helpers import SIDECAR, build_plugin
from harness.topology import NS_PREFIX, is_root

pytestmark = [pytest.mark.netns, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CRINODE = Path(os.environ.get("MESHNET_SHARED", REPO.parent / "shared")) / "tools" / "crinode" / "crinode"
# Built once per machine (the CRI client's venv and stubs, the pause image); the same lock as other CRI suites.
TEMPLATE = Path(os.environ.get("MESHNET_CRINODE_TEMPLATE", "/var/cache/meshnet-crinode"))


def _template() -> Path:
    TEMPLATE.mkdir(parents=True, exist_ok=True)
    with open(TEMPLATE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (TEMPLATE / "client" / "api_pb2_grpc.py").exists() or not (TEMPLATE / "image" / "pause.tar").exists():
            cp = subprocess.run([str(CRINODE), "setup"], capture_output=True, text=True, timeout=900,
                                env={**os.environ, "CRINODE_BASE": str(TEMPLATE)}, stdin=subprocess.DEVNULL)
            if cp.returncode != 0:
                raise RuntimeError(f"crinode setup failed: {cp.stderr.strip()[-2000:]}")
    return TEMPLATE


class Node:
    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.base = Path(f"/tmp/mn-crinode-{token}")
        self.netns = f"{NS_PREFIX}{token}-node"
        self.env = {**os.environ, "CRINODE_BASE": str(self.base), "CRINODE_NETNS": self.netns,
                    "MESHNET_CNI_AGENT_SOCKET": "off"}
        self.token = token

    def crinode(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CRINODE), *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    def up(self, plugin: dict[str, Any] | None = None) -> None:
        """`plugin`: the meshnet-cni conflist entry (default: iptables-nft, pod annotations)."""
        crinode_lock.acquire()  # released by down(), after `crinode down`
        template = _template()
        self.base.mkdir(mode=0o700)
        shutil.copytree(template / "client", self.base / "client")
        (self.base / "venv").symlink_to(template / "venv")
        (self.base / "image").mkdir()
        shutil.copy2(template / "image" / "pause.tar", self.base / "image" / "pause.tar")
        self._check(self.crinode("setup"), "setup")
        build_plugin(self.base / "cni" / "bin")
        subnet = f"10.{random.randint(1, 254)}.{random.randint(0, 255)}.0/24"
        conf = {"cniVersion": "1.0.0", "name": f"mn-{self.token}", "plugins": [
            {"type": "bridge", "bridge": f"mn-br{self.token}", "isGateway": False, "ipMasq": False,
             "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(self.base / "cni" / "ipam")}},
            plugin or {"type": "meshnet-cni", "backend": "iptables-nft",
                       "log_file": str(self.base / "log" / "meshnet-cni.log"),
                       "capabilities": {"io.kubernetes.cri.pod-annotations": True}}]}
        (self.base / "cni" / "net.d" / "10-mn.conflist").write_text(json.dumps(conf))
        self._check(self.crinode("start"), "start")

    def run_pod(self, name: str, namespace: str, annotations: dict[str, str]) -> dict[str, Any]:
        args = ["cri", "run", "--name", name, "--namespace", namespace]
        for k, v in annotations.items():
            args += ["-a", f"{k}={v}"]
        cp = self.crinode(*args)
        self._check(cp, f"cri run {name}")
        return json.loads(cp.stdout)

    def down(self) -> None:
        try:
            if self.base.exists():
                self.crinode("down")
                with open("/proc/self/mountinfo") as f:
                    mounted = [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{self.base}/")]
                if not mounted:
                    shutil.rmtree(self.base, ignore_errors=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        finally:
            crinode_lock.release()

    @staticmethod
    def _check(cp: subprocess.CompletedProcess[str], what: str) -> None:
        if cp.returncode != 0:
            raise RuntimeError(f"crinode {what} failed ({cp.returncode}): {(cp.stderr or cp.stdout).strip()[-2000:]}")


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    if not is_root():
        pytest.skip("needs root (containerd, namespaces); CI runs as root")
    n = Node()
    try:
        n.up()
        yield n
    finally:
        n.down()


def test_doctor_all_names_cri_pods(node: Node, tmp_path: Path) -> None:
    web = node.run_pod("web-0", "shop", SIDECAR)  # meshnet-cni programs it; no proxy runs in a bare sandbox
    plain = node.run_pod("batch-0", "jobs", {})  # no sidecar: meshnet-cni leaves it alone
    gone = node.run_pod("api-0", "shop", SIDECAR)
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "cleanup", "--netns", gone["netns"]],
                        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cp.returncode == 0, cp.stderr  # its rules removed: the CRI says it is meshed, so that is a finding
    empty = tmp_path / "none"
    empty.mkdir()
    sock = f"unix://{node.base}/run/containerd.sock"
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "doctor", "--all", "--cri", sock, "--netns-dir",
                         str(empty), "--no-proc", "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "Traceback" not in cp.stderr
    data = json.loads(cp.stdout)
    rows = {f"{r['namespace']}/{r['pod']}": r for r in data["pods"]}
    assert set(rows) == {"shop/web-0", "jobs/batch-0", "shop/api-0"}, data
    assert rows["shop/web-0"]["sandbox"] == web["id"] and rows["shop/web-0"]["path"] == web["netns"]
    assert rows["shop/web-0"]["worst"] == "critical proxy-not-listening"
    assert rows["shop/web-0"]["backends"] == ["iptables-nft"] and rows["shop/web-0"]["mode"] == "REDIRECT"
    assert rows["jobs/batch-0"]["worst"].startswith("unmeshed") and rows["jobs/batch-0"]["exit"] == 0
    assert rows["jobs/batch-0"]["sandbox"] == plain["id"]
    assert rows["shop/api-0"]["worst"] == "critical no-interception-rules"
    assert cp.returncode == data["exit"] == 1

    # The same node by process: the pause processes' /proc/PID/ns/net, named through the CRI.
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "doctor", "--all", "--cri", sock, "--netns-dir",
                         str(empty)], capture_output=True, text=True, timeout=300, cwd=REPO)
    table = cp.stdout.splitlines()
    assert sum(ln.startswith(("shop/web-0", "jobs/batch-0", "shop/api-0")) for ln in table) == 3, cp.stdout


def test_cri_subset_has_the_cri_field_numbers() -> None:
    proto = (_template() / "client" / "proto" / "api.proto").read_text()
    ours = (REPO / "meshnet" / "cri" / "cri_subset.proto").read_text()

    def fields(text: str) -> dict[tuple[str, str], str]:
        out = {}
        for m in re.finditer(r"^message (\w+)\s*\{[ \t]*\n(.*?)^\}", text, re.S | re.M):  # not `{}` ones
            for f in re.finditer(r"^\s+(?:repeated )?([\w.<>, ]+?)\s+(\w+)\s*=\s*(\d+);", m.group(2), re.M):
                out[(m.group(1), f.group(2))] = f"{f.group(1)} {f.group(3)}"
        return out

    full, subset = fields(proto), fields(ours)
    assert len(subset) > 20
    assert {k: full.get(k) for k in subset} == subset
