"""`meshnet probe collision`: prove whether a pod is exposed to the five-tuple collision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

# Package data (a module of this package), so a wheel and the image carry it; run as a script by path so
# the subprocess imports nothing of meshnet, only scapy after it entered the namespace.
SCRIPT = Path(__file__).resolve().parent / "collision_probe.py"


class ProbeError(Exception):
    """The probe could not run (missing script, namespace, scapy, ...)."""


def run_collision_probe(ns: Netns, target: str, ports: list[int], sport: int, timeout: float = 2.0,
                        mode: str = "both") -> dict[str, Any]:
    if not SCRIPT.exists():
        raise ProbeError(f"probe script not found: {SCRIPT}")
    argv = [sys.executable, str(SCRIPT), "--target", target, "--ports", ",".join(map(str, ports)),
            "--sport", str(sport), "--timeout", str(timeout), "--mode", mode]
    budget = 10 + timeout * (len(ports) + 1) * 2
    try:
        cp = subprocess.run(ns.argv(argv), capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"probe did not finish within {budget:.0f}s") from None
    if cp.returncode != 0 or not cp.stdout.strip():
        last = (cp.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"probe failed in {ns.label}: {last}")
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    out["verdict"], out["explanation"] = verdict(out)
    return out


def verdict(out: dict[str, Any]) -> tuple[str, str]:
    """hang (exposed, the 503 UF), ok, or inconclusive."""
    syn = out.get("syn", [])
    conn = out.get("connect", [])
    if (syn and syn[0]["result"] != "connected") or (conn and conn[0]["result"] != "connected"):
        return "inconclusive", f"the first port {out['ports'][0]} did not accept a connection"
    bad = [r for r in syn[1:] if r["result"] in ("challenge-ack", "silence")]
    bad += [r for r in conn[1:] if r["result"] == "timeout"]
    if bad:
        r = bad[0]
        how = (f"a challenge ACK from :{r.get('from_port')}" if r["result"] == "challenge-ack" else r["result"])
        return "hang", (f"a SYN from the source port already connected to :{out['ports'][0]} got {how} "
                        f"for :{r['port']}: this pod hangs on a five-tuple collision (503 UF)")
    return "ok", ("every port answered from the reused source port; a collision, if the pod redirects "
                  "the ports to one capture port, is repaired by the kernel (a SYN race still costs ~1 s)")
