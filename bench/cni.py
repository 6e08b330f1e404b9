"""meshnet-cni ADD wall time per pod next to the `bridge` plugin's own ADD, measured in the same run.

For each of N pods (fresh `mn-bench-<hex>-pNNN` namespaces): exec Debian's bridge plugin
(host-local IPAM, isGateway false) for ADD exactly as a runtime does (config on stdin, CNI_*
env), then exec the meshnet-cni zipapp (the deployable, run by /usr/bin/python3) for ADD with the
bridge's result as prevResult and an injected pod's annotations. Both are exec'd from inside a
`node` namespace through the same `nsenter` wrapper, whose own cost is printed too. Each pod is
done twice over (two namespaces): once with the plugin working alone (every module imported by
the exec'd process) and once with the node agent running (`meshnet cni agent`: the exec'd file
only forwards the request to a warm worker). Modes and plugins are interleaved, so machine noise
hits them alike. Target: meshnet-cni median <= 3x bridge.

    python bench/cni.py [--pods 50] [--backend auto|iptables-nft|iptables-legacy|nftables]

Needs root. Every namespace is `mn-bench-*` and is deleted at the end, even on error; the bridge
lives in the node namespace and goes with it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BRIDGE = "/usr/lib/cni/bridge"
SIDECAR = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
TARGET = 3.0


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Bench:
    def __init__(self, pods: int, backend: str) -> None:
        self.prefix = f"mn-bench-{secrets.token_hex(3)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="meshnet-cni-bench-"))
        self.namespaces: list[str] = []
        self.pods = pods
        self.backend = backend
        self.node = self._ns("node")
        self.plugin = self._build_plugin()
        self.agent_socket = str(self.tmp / "agent" / "agent.sock")
        self.agent: subprocess.Popen[str] | None = None
        self.net_conf = {"cniVersion": "1.0.0", "name": f"{self.prefix}-net"}

    def _ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        self.namespaces.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        return name

    def _build_plugin(self) -> Path:
        from meshnet.cni.bundle import build

        return build(self.tmp / "meshnet-cni")

    def start_agent(self) -> None:
        self.agent = subprocess.Popen([sys.executable, "-m", "meshnet.cli.main", "cni", "agent", "--socket",
                                       self.agent_socket], stdout=subprocess.PIPE, text=True)
        assert self.agent.stdout is not None
        if self.agent.stdout.readline().strip() != "READY":
            raise RuntimeError("meshnet cni agent did not start")

    def close(self) -> None:
        if self.agent is not None:  # our own child, by PID
            self.agent.terminate()
            self.agent.wait(10)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def exec_plugin(self, argv: Sequence[str], conf: dict[str, Any], env: dict[str, str]) -> tuple[float, str]:
        full = ["nsenter", f"--net=/run/netns/{self.node}", "--", *argv]
        data = json.dumps(conf)
        start = time.perf_counter()
        cp = subprocess.run(full, input=data, capture_output=True, text=True, env=env, timeout=60)
        elapsed = time.perf_counter() - start
        if cp.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({cp.returncode}): {cp.stdout.strip()} {cp.stderr.strip()}")
        return elapsed, cp.stdout

    def env(self, command: str, pod: str, cid: str, agent: bool = False) -> dict[str, str]:
        return {"MESHNET_CNI_AGENT_SOCKET": self.agent_socket if agent else "off",
                "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}

    def bridge_conf(self) -> dict[str, Any]:
        return {**self.net_conf, "type": "bridge", "bridge": f"mn-br{self.prefix[-6:]}", "isGateway": False,
                "ipMasq": False, "ipam": {"type": "host-local", "subnet": "10.77.0.0/16",
                                          "dataDir": str(self.tmp / "ipam")}}

    def meshnet_conf(self, prev: dict[str, Any]) -> dict[str, Any]:
        return {**self.net_conf, "type": "meshnet-cni", "backend": self.backend, "prevResult": prev,
                "runtimeConfig": {"io.kubernetes.cri.pod-annotations": SIDECAR}}

    def one_pod(self, index: int, agent: bool) -> tuple[float, float, float, float]:
        pod = self._ns(f"p{index:03d}{'a' if agent else ''}")
        cid = secrets.token_hex(16)
        t_bridge, out = self.exec_plugin([BRIDGE], self.bridge_conf(), self.env("ADD", pod, cid))
        prev = json.loads(out)
        mesh = [str(self.plugin)]
        t_mesh, _ = self.exec_plugin(mesh, self.meshnet_conf(prev), self.env("ADD", pod, cid, agent))
        if not self.has_rules(pod):
            raise RuntimeError(f"{pod}: no interception rules after ADD")
        t_mesh_del, _ = self.exec_plugin(mesh, self.meshnet_conf(prev), self.env("DEL", pod, cid, agent))
        t_bridge_del, _ = self.exec_plugin([BRIDGE], self.bridge_conf(), self.env("DEL", pod, cid))
        return t_bridge, t_mesh, t_bridge_del, t_mesh_del

    def has_rules(self, pod: str) -> bool:
        """Checked outside the timed region, with the tool of the backend in use."""
        argv = {"nftables": ["nft", "list", "tables"], "iptables-legacy": ["iptables-legacy-save"]}.get(
            self.backend, ["iptables-nft-save"])
        out = subprocess.run(["nsenter", f"--net=/run/netns/{pod}", "--", *argv], capture_output=True, text=True,
                             timeout=30).stdout
        return "ISTIO_OUTPUT" in out or "istio" in out

    def floor(self, runs: int = 15) -> tuple[float, float]:
        """nsenter alone, and nsenter + `python3 -IS -c pass`: what any exec'd plugin pays."""
        def timed(argv: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(["nsenter", f"--net=/run/netns/{self.node}", "--", *argv], check=True, timeout=30)
            return time.perf_counter() - start

        return (statistics.median(timed(["/bin/true"]) for _ in range(runs)),
                statistics.median(timed(["/usr/bin/python3", "-IS", "-c", "pass"]) for _ in range(runs)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--backend", default="auto", choices=("auto", "iptables-nft", "iptables-legacy", "nftables"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cni.py: needs root (network namespaces); skipped", file=sys.stderr)
        return 0
    bench = Bench(args.pods, args.backend)
    try:
        bench.start_agent()
        for i in range(3):  # warm the page cache for every binary; not counted
            bench.one_pod(900 + i, agent=False)
            bench.one_pod(900 + i, agent=True)
        alone: list[tuple[float, ...]] = []
        agent: list[tuple[float, ...]] = []
        for i in range(args.pods):
            alone.append(bench.one_pod(i, agent=False))
            agent.append(bench.one_pod(i, agent=True))
        nsenter, python = bench.floor()
    finally:
        bench.close()
    a, g = list(zip(*alone, strict=True)), list(zip(*agent, strict=True))
    bridge_add, bridge_del = list(a[0] + g[0]), list(a[2] + g[2])
    table = [("bridge ADD (+host-local)", bridge_add), ("meshnet-cni ADD, alone", list(a[1])),
             ("meshnet-cni ADD, agent", list(g[1])), ("bridge DEL", bridge_del),
             ("meshnet-cni DEL, alone", list(a[3])), ("meshnet-cni DEL, agent", list(g[3]))]
    print(f"meshnet-cni bench: {args.pods} pods per mode, backend {args.backend}, wall ms per exec (incl. nsenter)")
    print(f"{'':26} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, values in table:
        ms = [_ms(v) for v in values]
        print(f"{name:26} {statistics.median(ms):8.1f} {pct(ms, 0.9):8.1f} {pct(ms, 0.99):8.1f} {max(ms):8.1f}")
    print(f"{'floor: nsenter /bin/true':26} {_ms(nsenter):8.1f}")
    print(f"{'floor: python3 -IS pass':26} {_ms(python):8.1f}")
    b_med, b_p99 = statistics.median(bridge_add), pct(bridge_add, 0.99)
    for name, values in (("alone", list(a[1])), ("agent", list(g[1]))):
        ratio = statistics.median(values) / b_med
        print(f"ratio meshnet-cni ({name})/bridge ADD: median {ratio:.2f}x, p99 {pct(values, 0.99) / b_p99:.2f}x "
              f"(target <= {TARGET:.0f}x: {'met' if ratio <= TARGET else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
