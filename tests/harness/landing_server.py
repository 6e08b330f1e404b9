"""Landing server for real-kernel tests (stdlib only, runs under any python3 >= 3.9).

Listens on TCP and/or UDP ports (IPv4 and IPv6, separate sockets) and answers every TCP
connection / UDP datagram with ONE JSON line describing where it landed:

    {"name": tag, "proto": "tcp"|"udp", "listener_port": p, "peer": [ip, port],
     "local": [ip, port], "orig_dst": [ip, port] | null}

* TCP ``local`` is the accepted socket's address (with --transparent/TPROXY that *is* the
  original destination); ``orig_dst`` comes from SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST and is
  null when the connection was not NATed (lookup failed, or it equals ``local``).
* UDP ``local`` is the datagram's destination as delivered (IP_ORIGDSTADDR), ``orig_dst`` is
  always null: the kernel implements SO_ORIGINAL_DST for TCP/SCTP only.

For TCP the server waits up to 1 s for a line from the client (so it never races the client's
write into a RST), then replies and closes. Prints READY once every socket listens; runs until
killed.

    landing_server.py --name proxy --tcp 15001,15006 --udp 15053 [--bind4 0.0.0.0] [--bind6 ::]
                      [--transparent] [--mark N]

``--mark N`` sets SO_MARK on every socket (a fake ztunnel marks its sockets 0x539).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import threading
from typing import Any

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST
SO_MARK = 36
SOL_IP = 0
SOL_IPV6 = 41
IP_TRANSPARENT = 19
IP_PKTINFO = 8
IP_RECVORIGDSTADDR = 20
IPV6_TRANSPARENT = 75
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPV6_RECVORIGDSTADDR = 74


Addr = tuple[str, int]  # (ip, port): a JSON [ip, port] in the report


def parse_ports(values: list[str]) -> list[int]:
    return [int(p) for v in values for p in v.split(",") if p.strip()]


def addr(sa: tuple[Any, ...]) -> Addr:
    return (sa[0], sa[1])


def sockaddr_in(raw: bytes) -> Addr | None:
    family = struct.unpack_from("=H", raw, 0)[0]
    if family == socket.AF_INET:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        port = struct.unpack_from("!H", raw, 2)[0]
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
    return None


def orig_dst(conn: socket.socket) -> Addr | None:
    try:
        if conn.family == socket.AF_INET6:
            raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        else:
            raw = conn.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None  # ENOENT: no conntrack entry / not NATed
    return sockaddr_in(raw)


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.transparent = args.transparent
        self.mark = args.mark
        self.sel = selectors.DefaultSelector()
        families = []
        if args.bind4:
            families.append((socket.AF_INET, args.bind4))
        if args.bind6:
            families.append((socket.AF_INET6, args.bind6))
        for port in parse_ports(args.tcp):
            for fam, host in families:
                self.listen(fam, socket.SOCK_STREAM, host, port)
        for port in parse_ports(args.udp):
            for fam, host in families:
                self.listen(fam, socket.SOCK_DGRAM, host, port)

    def listen(self, fam: int, typ: int, host: str, port: int) -> None:
        s = socket.socket(fam, typ)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.mark:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)  # accepted sockets inherit it
        if fam == socket.AF_INET6:
            s.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1)  # v4 has its own socket
        if self.transparent:
            if fam == socket.AF_INET6:
                s.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            else:
                s.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        if typ == socket.SOCK_DGRAM:
            if fam == socket.AF_INET6:
                s.setsockopt(SOL_IPV6, IPV6_RECVPKTINFO, 1)
                s.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                s.setsockopt(SOL_IP, IP_PKTINFO, 1)
                s.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        s.bind((host, port))
        if typ == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, (typ, port))

    def serve(self) -> None:
        print("READY", flush=True)
        while True:
            for key, _ in self.sel.select():
                s = key.fileobj
                assert isinstance(s, socket.socket)  # listen() registers only sockets
                typ, port = key.data
                try:
                    if typ == socket.SOCK_STREAM:
                        conn, peer = s.accept()
                        threading.Thread(target=self.tcp, args=(conn, peer, port), daemon=True).start()
                    else:
                        self.udp(s, port)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    print(f"error on port {port}: {e!r}", file=sys.stderr, flush=True)

    def tcp(self, conn: socket.socket, peer: tuple[Any, ...], port: int) -> None:
        with conn:
            try:
                local = addr(conn.getsockname())
                od = orig_dst(conn)
                reply = {
                    "name": self.name,
                    "proto": "tcp",
                    "listener_port": port,
                    "peer": addr(peer),
                    "local": local,
                    "orig_dst": od if od != local else None,
                }
                conn.settimeout(1.0)
                buf = b""
                try:
                    while b"\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except (TimeoutError, OSError):
                    pass
                conn.sendall(json.dumps(reply).encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def udp(self, s: socket.socket, port: int) -> None:
        data, anc, _flags, peer = s.recvmsg(65535, 1024)
        local: Addr | None = None
        pkt_ifindex = 0
        for level, typ, raw in anc:
            if (level, typ) in ((SOL_IP, IP_RECVORIGDSTADDR), (SOL_IPV6, IPV6_RECVORIGDSTADDR)):
                local = sockaddr_in(raw)
            elif (level, typ) == (SOL_IPV6, IPV6_PKTINFO):
                pkt_ifindex = struct.unpack_from("=I", raw, 16)[0]
            elif (level, typ) == (SOL_IP, IP_PKTINFO):
                pkt_ifindex = struct.unpack_from("=i", raw, 0)[0]
        if local is None:
            local = addr(s.getsockname())
        reply = {
            "name": self.name,
            "proto": "udp",
            "listener_port": port,
            "peer": addr(peer),
            "local": local,
            "orig_dst": None,
        }
        out = json.dumps(reply).encode() + b"\n"
        if self.transparent and local[1] != port:
            # TPROXY'd datagram: answer from the original ip:port, like a transparent proxy.
            try:
                with socket.socket(s.family, socket.SOCK_DGRAM) as r:
                    lvl, opt = (
                        (SOL_IPV6, IPV6_TRANSPARENT)
                        if s.family == socket.AF_INET6
                        else (
                            SOL_IP,
                            IP_TRANSPARENT,
                        )
                    )
                    r.setsockopt(lvl, opt, 1)
                    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    r.bind((local[0], local[1]))
                    r.sendto(out, peer)
                    return
            except OSError:
                pass
        # Reply from the address the datagram was delivered to, so conntrack's reverse NAT
        # (REDIRECT/DNAT) matches and the client sees the address it sent to.
        if s.family == socket.AF_INET6:
            info = socket.inet_pton(socket.AF_INET6, local[0]) + struct.pack("=I", pkt_ifindex)
            cmsg = [(SOL_IPV6, IPV6_PKTINFO, info)]
        else:
            info = struct.pack("=i", 0) + socket.inet_pton(socket.AF_INET, local[0]) + bytes(4)
            cmsg = [(SOL_IP, IP_PKTINFO, info)]
        try:
            s.sendmsg([out], cmsg, 0, peer)
        except OSError:
            s.sendto(out, peer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="landing_server")
    ap.add_argument("--name", default="server")
    ap.add_argument("--tcp", action="append", default=[], help="comma-separated TCP ports")
    ap.add_argument("--udp", action="append", default=[], help="comma-separated UDP ports")
    ap.add_argument("--bind4", default="0.0.0.0", help="IPv4 bind address ('' = no IPv4)")
    ap.add_argument("--bind6", default="::", help="IPv6 bind address ('' = no IPv6)")
    ap.add_argument("--transparent", action="store_true", help="IP_TRANSPARENT listeners (TPROXY)")
    ap.add_argument("--mark", type=lambda v: int(v, 0), default=0, help="SO_MARK of every socket")
    args = ap.parse_args(argv)
    try:
        server = Server(args)
    except OSError as e:
        print(f"landing_server: cannot listen: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
