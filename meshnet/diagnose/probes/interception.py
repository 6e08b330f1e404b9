"""`meshnet probe interception`: does this pod's inbound/outbound traffic land on the capture ports?

For pods whose proxy is not running yet: temporary listeners on the capture ports (IP_TRANSPARENT,
so TPROXY can deliver to them too) record where each probe connection lands and its original
destination. Outbound: a connection from inside the pod to --target. Inbound: a connection from
--peer-netns to the pod's address. Uses plain sockets; nothing is changed in the namespaces.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns


class ListenerBusy(Exception):
    pass


def _listener(ns: Netns, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT: TPROXY only delivers to such sockets
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            s.close()
            raise ListenerBusy(f"port {port} is in use in the pod (is the proxy running?)") from None
        s.listen(16)
        s.settimeout(0.2)
        return s

    return ns.call_in(make)


def _orig_dst(c: socket.socket) -> list[Any] | None:
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    except OSError:
        return None
    return [socket.inet_ntoa(raw[4:8]), struct.unpack(">H", raw[2:4])[0]]


def _accept_all(s: socket.socket, port: int, seen: list[dict[str, Any]], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            c, peer = s.accept()
        except (TimeoutError, OSError):
            continue
        with c:
            seen.append({"listener": port, "peer": list(peer), "local": list(c.getsockname()),
                         "orig_dst": _orig_dst(c)})


def _connect(ns: Netns, ip: str, port: int, timeout: float) -> str:
    s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error: {e.strerror or e}"
    finally:
        s.close()


def probe_interception(pod: Netns, pod_ip: str | None, peer: Netns | None, target: str | None,
                       inbound_port: int = 8080, outbound_port: int = 80, in_capture: int = 15006,
                       out_capture: int = 15001, timeout: float = 1.5) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    socks = [(_listener(pod, in_capture), in_capture), (_listener(pod, out_capture), out_capture)]
    threads = [threading.Thread(target=_accept_all, args=(s, p, seen, stop), daemon=True) for s, p in socks]
    for t in threads:
        t.start()
    out: dict[str, Any] = {}
    try:
        if peer is not None and pod_ip:
            res = _connect(peer, pod_ip, inbound_port, timeout)
            time.sleep(0.1)
            hit = [x for x in seen if x["listener"] == in_capture]
            out["inbound"] = _verdict(res, hit, pod_ip, inbound_port, in_capture)
        if target:
            n = len(seen)
            res = _connect(pod, target, outbound_port, timeout)
            time.sleep(0.1)
            hit = [x for x in seen[n:] if x["listener"] == out_capture]
            out["outbound"] = _verdict(res, hit, target, outbound_port, out_capture)
    finally:
        stop.set()
        for t in threads:
            t.join(1)
        for s, _ in socks:
            s.close()
    return out


def _verdict(res: str, hit: list[dict[str, Any]], ip: str, port: int, capture: int) -> dict[str, Any]:
    if hit:
        h = hit[0]
        mode = "tproxy" if h["local"] == [ip, port] else "redirect"
        return {"captured": True, "mode": mode, "connect": res, "landed": h,
                "text": f"{ip}:{port} landed on the capture listener :{capture} ({mode})"}
    return {"captured": False, "connect": res,
            "text": f"{ip}:{port} was not captured by :{capture} (connect: {res})"}
