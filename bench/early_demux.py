"""What turning TCP early demux off in a pod costs: connection rate and throughput over a veth.

`--prevent-tuple-collision=auto` sets `net.ipv4.tcp_early_demux=0` in REDIRECT pods on kernels < 6.7.
Early demux saves a socket lookup per received packet, so the cost shows on the pod's receive path.
Setup: a client and a pod namespace joined by a veth; the pod runs Istio's injector rules applied by
meshnet (inbound REDIRECT to :15006) and a listener on :15006, so every byte goes through the same
path as a meshed pod. Each measurement runs with early demux on and off in the pod, alternating, in
the same run; the table prints the medians and the ratio off/on.

    python bench/early_demux.py [--rounds 5] [--conns 2000] [--megabytes 512]

Needs root. Namespaces are `mn-bench-<random>-*`, deleted at the end, even on error.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
from pathlib import Path

MESHNET = str(Path(sys.executable).parent / "meshnet")
FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
         "-d", "15090,15021,15020", "--prevent-tuple-collision=off"]
POD, CLIENT = "10.98.0.2", "10.98.0.1"

SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15006)); s.listen(512)
print("ready", flush=True)
def drain(c):
    with c:
        while c.recv_into(buf_of()):
            pass
local = threading.local()
def buf_of():
    b = getattr(local, "b", None)
    if b is None:
        b = local.b = bytearray(1 << 20)
    return b
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

CLIENT_CODE = r"""
import socket, sys, time
pod, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if what == "conns":
    t = time.perf_counter()
    for i in range(n):
        c = socket.create_connection((pod, 8080 + i % 2)); c.close()
    print(n / (time.perf_counter() - t))
else:
    data = b"x" * (1 << 20)
    c = socket.create_connection((pod, 8080))
    t = time.perf_counter()
    for _ in range(n):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
    print(n / (time.perf_counter() - t))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--megabytes", type=int, default=512)
    a = ap.parse_args()
    tag = f"mn-bench-{secrets.token_hex(3)}"
    cli, pod = f"{tag}-cli", f"{tag}-pod"
    server = None
    try:
        sh("ip", "netns", "add", cli)
        sh("ip", "netns", "add", pod)
        sh("ip", "-n", cli, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pod)
        for ns, ip in ((cli, CLIENT), (pod, POD)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", pod, MESHNET, "istio-iptables", *FLAGS)
        server = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                                  text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(a.rounds):
            for demux in (1, 0):
                sh("ip", "netns", "exec", pod, "sysctl", "-qw", f"net.ipv4.tcp_early_demux={demux}")
                for what, n in (("conns", a.conns), ("bytes", a.megabytes)):
                    out = sh("ip", "netns", "exec", cli, sys.executable, "-c", CLIENT_CODE, POD, what, str(n))
                    rates.setdefault((what, demux), []).append(float(out))
        print(f"kernel {os.uname().release}, {a.rounds} rounds, medians; pod has Istio's REDIRECT rules")
        print(f"{'measurement':<34} {'early demux on':>16} {'early demux off':>16} {'off/on':>8}")
        for what, unit in (("conns", "connections/s"), ("bytes", "MB/s")):
            on, off = statistics.median(rates[(what, 1)]), statistics.median(rates[(what, 0)])
            label = f"{'connect+close' if what == 'conns' else 'bulk send, one connection'} ({unit})"
            print(f"{label:<34} {on:>16.0f} {off:>16.0f} {off / on:>8.2f}")
        return 0
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (cli, pod):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
