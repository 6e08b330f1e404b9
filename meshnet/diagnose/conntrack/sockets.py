"""TCP sockets of a namespace over sock_diag (NETLINK_SOCK_DIAG, inet_diag_req_v2).

Own ~60-line decoder instead of pyroute2's DiagSocket: pyroute2 0.9.7 does not decode
INET_DIAG_SOCKOPT, which carries the IP_TRANSPARENT bit that decides whether a collision hangs
on a fixed kernel, and importing it costs ~140 ms.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from meshnet.lite.records import dataclass

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
INET_DIAG_SOCKOPT = 22
TCP_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
              7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW-SYN-RECV"}


@dataclass(frozen=True)
class TcpSock:
    family: int
    state: str
    local: str
    lport: int
    peer: str
    pport: int
    transparent: bool | None  # None: kernel did not report INET_DIAG_SOCKOPT
    uid: int
    retrans: int

    def text(self) -> str:
        flag = " transparent" if self.transparent else ""
        return f"{self.state} {self.local}:{self.lport} <- {self.peer}:{self.pport} uid={self.uid}{flag}"


def list_tcp(ns: Netns | None) -> list[TcpSock]:
    """All TCP sockets (IPv4 and IPv6) in the namespace."""
    if ns is None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    else:
        s = ns.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    out: list[TcpSock] = []
    with s:
        for fam in (socket.AF_INET, socket.AF_INET6):
            req = struct.pack("<BBBxI", fam, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + b"\0" * 48
            s.send(struct.pack("<IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 0x301, fam, 0) + req)
            out += _read(s, fam)
    return out


def _read(s: socket.socket, fam: int) -> list[TcpSock]:
    out: list[TcpSock] = []
    while True:
        buf = s.recv(1 << 16)
        pos = 0
        while pos + 16 <= len(buf):
            ln, typ = struct.unpack_from("<IH", buf, pos)
            if typ == 3:  # NLMSG_DONE
                return out
            if typ == 2:  # NLMSG_ERROR
                code = -struct.unpack_from("<i", buf, pos + 16)[0]
                if code:
                    raise OSError(code, "sock_diag")
                return out
            out.append(_decode(buf, pos + 16, pos + ln, fam))
            pos = (pos + ln + 3) & ~3


def _decode(buf: bytes, p: int, end: int, fam: int) -> TcpSock:
    _fam, state, _timer, retrans = struct.unpack_from("<BBBB", buf, p)
    sport, dport = struct.unpack_from(">HH", buf, p + 4)
    n = 4 if fam == socket.AF_INET else 16
    src = socket.inet_ntop(fam, buf[p + 8:p + 8 + n])
    dst = socket.inet_ntop(fam, buf[p + 24:p + 24 + n])
    uid = struct.unpack_from("<I", buf, p + 64)[0]
    transparent = None
    a = p + 72
    while a + 4 <= end:
        alen, atyp = struct.unpack_from("<HH", buf, a)
        if alen < 4:
            break
        if atyp == INET_DIAG_SOCKOPT and alen >= 5:
            transparent = bool(buf[a + 4] & 0x20)  # bit 5 of the first bitfield byte
        a += (alen + 3) & ~3
    return TcpSock(fam, TCP_STATES.get(state, str(state)), src, sport, dst, dport, transparent, uid, retrans)
