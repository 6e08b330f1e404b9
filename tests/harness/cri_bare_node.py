"""A bare containerd CRI node (crinode) whose sandboxes get bridge (isGateway false) + meshnet-cni from a
conflist the test writes: for `doctor --all --cri` and the ambient node agent. The image-based node with
the meshnet image is tests/harness/cri_helpers.py."""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness import crinode_lock
from harness.cni_helpers import build_plugin
from harness.crinode_tool import CrinodeCalls, node_env, seed_base
from harness.topology import NS_PREFIX

REPO = Path(__file__).resolve().parents[2]


class Node(CrinodeCalls):
    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.base = Path(f"/tmp/mn-crinode-{token}")
        self.netns = f"{NS_PREFIX}{token}-node"
        self.cgroup_parent = f"/crinode-pods-{token}"  # `crinode down` kills only this node's pods
        self.env = {**node_env(self.base, self.netns, self.cgroup_parent), "MESHNET_CNI_AGENT_SOCKET": "off"}
        self.token = token

    def up(self, plugin: dict[str, Any] | None = None) -> None:
        """`plugin`: the meshnet-cni conflist entry (default: iptables-nft, pod annotations)."""
        crinode_lock.acquire()  # released by down(), after `crinode down`
        seed_base(self.base)
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
                mounted = self.mounts_left()
                if not mounted:
                    shutil.rmtree(self.base, ignore_errors=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        finally:
            crinode_lock.release()

