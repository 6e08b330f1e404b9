"""The demo's fake sidecar and peer server: a tiny TCP landing server (stdlib only).

``meshnet.demo`` runs this file's *source* with the system python under ``setpriv`` inside a
namespace (the proxy must run as uid 1337 and cannot read the venv), so it must not import
meshnet. Each accepted connection gets one JSON line back::

    {"name": ..., "listener_port": 15001, "peer": [ip, port], "orig_dst": [ip, port] | null}

``orig_dst`` is SO_ORIGINAL_DST: where the client meant to go before iptables/nftables
redirected it. Prints READY once listening; runs until killed.

    landing.py NAME PORT[,PORT...]
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; also IP6T_SO_ORIGINAL_DST


def original_destination(conn: socket.socket) -> list[object] | None:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None  # not NATed: no conntrack entry to read it from
    port = struct.unpack_from("!H", raw, 2)[0]
    return [socket.inet_ntoa(raw[4:8]), port]


def answer(name: str, conn: socket.socket, peer: tuple[str, int], port: int) -> None:
    with conn:
        od = original_destination(conn)
        if od == list(conn.getsockname()):
            od = None  # the kernel reports the socket's own address when nothing was rewritten
        reply = {"name": name, "listener_port": port, "peer": list(peer), "orig_dst": od}
        conn.sendall(json.dumps(reply).encode() + b"\n")


def serve(name: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        sel.register(s, selectors.EVENT_READ, port)
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            conn, peer = listener.accept()
            try:
                answer(name, conn, peer, key.data)
            except OSError:
                pass  # a client that went away must not stop the demo's server


def main(argv: list[str]) -> None:
    name, ports = argv[0], [int(p) for p in argv[1].split(",")]
    try:
        serve(name, ports)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
