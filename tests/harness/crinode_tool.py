"""Where the repo's crinode lives (tests/harness/crinode/) and its per-checkout template.

The template (`build/crinode-template`, or $MESHNET_CRINODE_TEMPLATE) holds what every node copies
instead of rebuilding: the CRI client stubs generated from the vendored api.proto with this venv's
grpcio-tools, and the pause image. It is built once per checkout under a lock (about 3 s).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CRINODE = HERE / "crinode" / "crinode"
CRI_PY = HERE / "crinode" / "cri.py"
API_PROTO = HERE / "crinode" / "proto" / "api.proto"  # k8s.io/cri-api runtime/v1, see its PROVENANCE.md
TEMPLATE = Path(os.environ.get("MESHNET_CRINODE_TEMPLATE", REPO / "build" / "crinode-template"))


def node_env(base: Path, netns: str, cgroup_parent: str) -> dict[str, str]:
    """The environment of every crinode call for one node (also what containerd passes to plugins)."""
    return {**os.environ, "CRINODE_BASE": str(base), "CRINODE_NETNS": netns,
            "CRINODE_CGROUP_PARENT": cgroup_parent, "CRINODE_PYTHON": sys.executable}


def crinode_template() -> Path:
    TEMPLATE.mkdir(parents=True, exist_ok=True)
    with open(TEMPLATE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (TEMPLATE / "client" / "api_pb2_grpc.py").exists() or not (TEMPLATE / "image" / "pause.tar").exists():
            env = node_env(TEMPLATE, "mn-template-unused", "/crinode-pods-template-unused")  # setup starts nothing
            cp = subprocess.run([str(CRINODE), "setup"], capture_output=True, text=True, timeout=900, env=env,
                                stdin=subprocess.DEVNULL)
            if cp.returncode != 0:
                raise RuntimeError(f"crinode setup failed: {(cp.stderr or cp.stdout).strip()[-2000:]}")
    return TEMPLATE


def seed_base(base: Path) -> None:
    """A new node's CRINODE_BASE (0700) with the template's client and pause image in it."""
    template = crinode_template()
    base.mkdir(mode=0o700)
    shutil.copytree(template / "client", base / "client")
    (base / "image").mkdir()
    shutil.copy2(template / "image" / "pause.tar", base / "image" / "pause.tar")


class CrinodeCalls:
    """The crinode calls every test node makes with its own environment and base (cri_helpers.CriNode,
    cri_bare_node.Node)."""

    env: dict[str, str]
    base: Path

    def crinode(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CRINODE), *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    @staticmethod
    def _check(cp: subprocess.CompletedProcess[str], what: str) -> None:
        if cp.returncode != 0:
            raise RuntimeError(f"crinode {what} failed ({cp.returncode}): {(cp.stderr or cp.stdout).strip()[-2000:]}")

    def mounts_left(self) -> list[str]:
        """Mount points still under this node's base after `crinode down` (never delete through them)."""
        with open("/proc/self/mountinfo") as f:
            return [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{self.base}/")]
