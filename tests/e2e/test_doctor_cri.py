"""`meshnet doctor --all --cri`: real pod sandboxes of containerd's CRI plugin (tests/harness/crinode),
named by ListPodSandbox + PodSandboxStatus; the CNI chain is bridge (isGateway false) + meshnet-cni.

Also checks that meshnet's CRI subset proto has the CRI's own field numbers (against the full
api.proto crinode builds its client from, vendored in tests/harness/crinode/proto)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cni_helpers import SIDECAR
from harness.cri_bare_node import REPO, Node
from harness.crinode_tool import API_PROTO
from harness.topology import is_root

pytestmark = [pytest.mark.netns, pytest.mark.slow]


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
    proto = API_PROTO.read_text()
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
