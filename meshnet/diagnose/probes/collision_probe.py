"""Collision probe, run by `meshnet probe collision` inside the CLIENT namespace (nsenter), as root.

Holds a real connection from --sport to the first port, then for every other port:
  * scapy variant: a raw SYN from the same source port, and what comes back within --timeout:
    "syn-ack" from the right port, "challenge-ack" (a bare ACK, usually from the held port: the
    503 UF hang), "reset", or "silence";
  * connect variant (with --sport+1, its own held connection): a real connect(), "connected" or
    "timeout"/"refused" and how long it took.
Prints one JSON object. scapy is imported here only, after the process entered the namespace, so its
interface/route snapshot is the client's.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scapy.packet import Packet  # no type information: Any to the checker


def hold(target: str, port: int, sport: int, timeout: float) -> tuple[socket.socket | None, dict[str, Any]]:
    s = socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", sport))
    s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((target, port))
    except OSError as e:
        s.close()
        return None, {"port": port, "result": _err(e), "after_s": round(time.monotonic() - t, 3)}
    return s, {"port": port, "result": "connected", "after_s": round(time.monotonic() - t, 3), "held": True}


def _err(e: OSError) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return f"error: {e}"


def syn_probe(target: str, port: int, sport: int, timeout: float) -> dict[str, Any]:
    from scapy.config import conf  # heavy import: only here, after entering the namespace
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.sendrecv import AsyncSniffer, send

    conf.verb = 0
    v6 = ":" in target
    iface = (conf.route6.route(target)[0] if v6 else conf.route.route(target)[0])

    def mine(p: Packet) -> bool:
        ip = p.getlayer(IPv6 if v6 else IP)
        tcp = p.getlayer(TCP)
        return ip is not None and tcp is not None and ip.src == target and tcp.dport == sport

    sniffer = AsyncSniffer(iface=iface, lfilter=mine, store=True)
    sniffer.start()
    time.sleep(0.2)  # let the capture socket attach before the SYN goes out
    seq = random.randrange(1 << 32)
    l3 = IPv6(dst=target) if v6 else IP(dst=target)
    t = time.monotonic()
    send(l3 / TCP(sport=sport, dport=port, flags="S", seq=seq), iface=iface)
    deadline = t + timeout
    while time.monotonic() < deadline and not sniffer.results:
        time.sleep(0.02)
    time.sleep(0.05)
    pkts: Any = sniffer.stop() or []  # a scapy PacketList
    replies: list[dict[str, Any]] = []
    for p in pkts:
        tcp = p[TCP]
        replies.append({"from_port": int(tcp.sport), "flags": str(tcp.flags), "ack": int(tcp.ack)})
    out: dict[str, Any] = {"port": port, "sport": sport, "replies": replies, "after_s": round(time.monotonic() - t, 3)}
    if not replies:
        out["result"] = "silence"
        return out
    r = replies[0]
    flags = set(r["flags"])
    if "S" in flags and "A" in flags and r["from_port"] == port:
        out["result"] = "syn-ack"
    elif "R" in flags:
        out["result"] = "reset"
    elif "A" in flags and "S" not in flags:
        out["result"] = "challenge-ack"  # an established socket answered our SYN
    else:
        out["result"] = "unexpected"
    out["from_port"] = r["from_port"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--sport", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--mode", choices=("both", "syn", "connect"), default="both")
    a = ap.parse_args()
    ports = [int(p) for p in a.ports.split(",")]
    out: dict[str, Any] = {"target": a.target, "ports": ports, "sport": a.sport}
    keep = []
    if a.mode in ("both", "syn"):
        s, first = hold(a.target, ports[0], a.sport, a.timeout)
        out["syn"] = [first]
        if s is not None:
            keep.append(s)
            out["syn"] += [syn_probe(a.target, p, a.sport, a.timeout) for p in ports[1:]]
    if a.mode in ("both", "connect"):
        sport = a.sport + 1 if a.mode == "both" else a.sport
        results: list[dict[str, Any]] = []
        for p in ports:
            s, r = hold(a.target, p, sport, a.timeout if results else 3.0)
            if s is not None:
                keep.append(s)
            results.append(r)
        out["connect"] = results
        out["connect_sport"] = sport
    print(json.dumps(out), flush=True)
    for s in keep:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
