"""RunPodSandbox wall time under containerd's CRI: bridge + meshnet-cni against bridge alone, same run.

Three crinode nodes run side by side (tests/harness/cri_helpers.py; each its own CRINODE_BASE and `mn-` node
namespace): `bridge` (the floor: bridge + host-local, isGateway false), `meshnet-cni` (bridge then the
meshnet-cni plugin file, exec'd by containerd and working alone) and `meshnet-cni + agent` (the same,
with the node agent the DaemonSet runs, `meshnet cni agent`, in the node namespace). Pods are created
round-robin over the three so machine noise hits them alike; each pod carries an injected pod's
annotations, and is stopped and removed before the next round (not timed). The time is the CRI call
as kubelet sees it (`run_s`: RunPodSandbox RPC, sandbox + CNI chain). Target: median ratio <= 1.5x.

    python bench/cri.py [--pods 20]

Needs root. Every node is torn down (`crinode down`) at the end, even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.cri_helpers import SIDECAR, CriNode  # noqa: E402

TARGET = 1.5


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@contextlib.contextmanager
def agent(node: CriNode) -> Iterator[subprocess.Popen[bytes]]:
    """`meshnet cni agent` in the node's namespace, as the DaemonSet's agent container (hostNetwork)."""
    meshnet = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "meshnet"
    # nsenter, not `ip netns exec`: a mount namespace of its own would not see containerd's netns mounts
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node.netns}", str(meshnet), "cni", "agent", "--socket",
                             node.agent_socket, "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if os.path.exists(node.agent_socket):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the agent did not create its socket")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/cri.py: needs root (containerd, network namespaces); skipped", file=sys.stderr)
        return 0
    sock = f"/tmp/mn-bench-agent-{secrets.token_hex(3)}.sock"
    nodes = {"bridge": CriNode(chain_meshnet=False, import_image=False),
             "meshnet-cni": CriNode(import_image=False),
             "meshnet-cni + agent": CriNode(import_image=False, agent_socket=sock)}
    times: dict[str, list[float]] = {k: [] for k in nodes}
    with contextlib.ExitStack() as stack:
        for node in nodes.values():
            stack.enter_context(node)
        stack.enter_context(agent(nodes["meshnet-cni + agent"]))
        for node in nodes.values():  # one warm-up pod each: first-use costs are not pod-start costs
            p = node.run_pod(f"warm-{secrets.token_hex(2)}", "bench", SIDECAR).data
            node.stop_pod(p["id"])
            node.rm_pod(p["id"])
        for i in range(args.pods):
            for name, node in nodes.items():
                p = node.run_pod(f"pod{i}-{secrets.token_hex(2)}", "bench", SIDECAR).data
                times[name].append(p["run_s"] * 1000)
                node.stop_pod(p["id"])
                node.rm_pod(p["id"])
    floor = statistics.median(times["bridge"])
    print(f"CRI RunPodSandbox bench: {args.pods} pods per node, ms per call (containerd 1.6 + runc + CNI chain)")
    print(f"{'':26} {'median':>8} {'p90':>8} {'max':>8}")
    for name, ms in times.items():
        print(f"{name:26} {statistics.median(ms):8.1f} {pct(ms, 0.9):8.1f} {max(ms):8.1f}")
    for name in ("meshnet-cni", "meshnet-cni + agent"):
        ratio = statistics.median(times[name]) / floor
        verdict = "met" if ratio <= TARGET else "missed"
        print(f"ratio RunPodSandbox {name}/bridge: median {ratio:.2f}x (target <= {TARGET}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
