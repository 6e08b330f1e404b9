"""Real-kernel reproductions of the five-tuple collision for the conntrack/probe tests.

A hold server in the pod (answers one JSON line and keeps the connection open, optionally
IP_TRANSPARENT) and clients in the peer that reuse one source port, with Istio's rules installed
in the pod exactly as istio-cni applies them (the golden restore text).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.golden_cases import GOLDEN as GOLDEN_DIR
from harness.topology import PYTHON, Topology

from meshnet.apply.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = GOLDEN_DIR / "cni-plugin"
CLI = [sys.executable, "-m", "meshnet.cli.conntrack_cmd"]
PROBE_CLI = [sys.executable, "-m", "meshnet.cli.probe_cmd"]

HOLD_SERVER = r'''
import json, socket, sys, threading
port, transparent = int(sys.argv[1]), sys.argv[2] == "1"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if transparent:
    s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
s.bind(("0.0.0.0", port)); s.listen(128)
keep = []
print("READY", flush=True)
while True:
    c, peer = s.accept()
    keep.append(c)  # never closed: the collision needs the first connection ESTABLISHED
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        od = [socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")]
    except OSError:
        od = None
    c.sendall((json.dumps({"peer": list(peer), "local": list(c.getsockname()), "orig_dst": od}) + "\n").encode())
'''

# Sequential: A = sport -> :p1 (kept open), then B = sport -> :p2. Prints A, then B's outcome.
SEQ_CLIENT = r'''
import json, socket, sys, time
dst, p1, p2, sport, tmo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def conn(port, timeout):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport)); s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((dst, port))
        line = s.makefile().readline()
        return s, {"port": port, "ok": True, "after": round(time.monotonic() - t, 3), "server": json.loads(line)}
    except OSError as e:
        return s, {"port": port, "ok": False, "after": round(time.monotonic() - t, 3), "error": repr(e)}
a, ra = conn(p1, 3)
print(json.dumps(ra), flush=True)
b, rb = conn(p2, tmo)
print(json.dumps(rb), flush=True)
sys.stdin.read()  # hold both sockets until the test closes stdin or kills us
'''

# Race: two threads pinned to two CPUs connect from one source port at the same moment; rounds
# with a new source port until one SYN was lost (the connect took > 0.8 s) or max rounds.
RACE_CLIENT = r'''
import json, os, socket, sys, threading, time
dst, p1, p2, base, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpus = sorted(os.sched_getaffinity(0))
keep = []
for r in range(rounds):
    sport = base + r
    bar = threading.Barrier(2)
    res = {}
    def go(i, port):
        os.sched_setaffinity(0, {cpus[i % len(cpus)]})
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport)); s.settimeout(5)
        keep.append(s)
        bar.wait()
        t = time.monotonic()
        try:
            s.connect((dst, port)); res[port] = round(time.monotonic() - t, 3)
        except OSError as e:
            res[port] = repr(e)
    th = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate((p1, p2))]
    [t.start() for t in th]; [t.join() for t in th]
    slow = any(isinstance(v, float) and v > 0.8 for v in res.values())
    print(json.dumps({"round": r, "sport": sport, "times": res, "slow": slow}), flush=True)
    if slow:
        break
print("DONE", flush=True)
sys.stdin.read()
'''


def install_redirect(pod: Netns) -> None:
    pod.run(["iptables-restore", "--noflush"], input=(GOLDEN / "basic.txt.golden").read_text())


def install_tproxy(pod: Netns) -> None:
    pod.run(["iptables-restore", "--noflush"], input=(GOLDEN / "tproxy.txt.golden").read_text())
    pod.run(["ip", "rule", "add", "fwmark", "1337", "lookup", "133"])
    pod.run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "133"])


_BUF: dict[int, bytes] = {}


def readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """Next stdout line of proc, reading the fd directly (select() cannot see a text buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = _BUF.get(proc.pid, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(left, 0))
        if not r:
            raise RuntimeError(f"no output from pid {proc.pid} within {timeout}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"pid {proc.pid} exited: {err.strip()}")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    _BUF[proc.pid] = rest
    return line.decode().strip()


def hold_server(topo: Topology, port: int = 15006, transparent: bool = False) -> subprocess.Popen[str]:
    p = topo.spawn(topo.pod, [PYTHON, "-I", "-S", "-c", HOLD_SERVER, str(port), "1" if transparent else "0"],
                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert readline(p, 5) == "READY"
    return p


def seq_client(topo: Topology, sport: int, p1: int = 9080, p2: int = 8080,
               timeout: float = 10.0) -> subprocess.Popen[str]:
    return topo.spawn(topo.peer, [PYTHON, "-I", "-S", "-c", SEQ_CLIENT, topo.pod_ip4, str(p1), str(p2),
                                  str(sport), str(timeout)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def race_client(topo: Topology, base: int, rounds: int = 40) -> subprocess.Popen[str]:
    return topo.spawn(topo.peer, [PYTHON, "-I", "-S", "-c", RACE_CLIENT, topo.pod_ip4, "9080", "8080",
                                  str(base), str(rounds)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def analyze(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run the CLI like a user does; returns (exit code, parsed --json, stderr)."""
    cp = subprocess.run([*CLI, "analyze", *args, "--json"], capture_output=True, text=True, timeout=60,
                        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    data = json.loads(cp.stdout) if cp.stdout.strip() else {}
    return cp.returncode, data, cp.stderr


def kinds(data: dict[str, Any]) -> list[str]:
    return sorted(f["kind"] for f in data.get("findings", []))


def finding(data: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [f for f in data["findings"] if f["kind"] == kind]
    assert found, f"no {kind} finding in {kinds(data)}"
    return found[0]
