"""Who listens on a port in a namespace: uid and inode from /proc/net/tcp{,6}, the process (and
its gid, which the socket tables do not carry) from /proc/*/fd of the namespace's processes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from meshnet.lite.records import dataclass

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

_LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    port: int
    uid: int
    inode: int
    pid: int | None = None
    gid: int | None = None  # the owning process's fsgid (what `-m owner --gid-owner` compares)
    comm: str = ""

    def text(self) -> str:
        who = f"pid {self.pid} ({self.comm})" if self.pid else "process not found"
        gid = self.gid if self.gid is not None else "?"
        return f"tcp :{self.port} listened on by uid {self.uid} gid {gid}, {who}"


def tcp_listeners(netns: Netns) -> list[Listener]:
    out: list[Listener] = []
    for name in ("tcp", "tcp6"):
        try:
            text = netns.read_proc_net(name)
        except (FileNotFoundError, OSError):
            continue
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN:
                out.append(Listener(int(cols[1].rsplit(":", 1)[1], 16), int(cols[7]), int(cols[9])))
    return out


def with_owners(netns: Netns, listeners: list[Listener]) -> list[Listener]:
    """Fill pid/gid/comm by finding each socket inode among the fds of the namespace's processes."""
    want = {f"socket:[{sock.inode}]": sock for sock in listeners if sock.inode}
    found: dict[int, tuple[int, int | None, str]] = {}
    from meshnet.errors import MeshnetError

    try:
        ns_ino = netns.inode
    except (OSError, MeshnetError):
        return listeners
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ns_ino:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link in want and want[link].inode not in found:
                    found[want[link].inode] = (int(pid), _fsgid(pid), _comm(pid))
        except OSError:
            continue  # the process exited or is not ours to read
    out = []
    for sock in listeners:
        if sock.inode in found:
            owner_pid, gid, comm = found[sock.inode]
            sock = Listener(sock.port, sock.uid, sock.inode, owner_pid, gid, comm)
        out.append(sock)
    return out


def _fsgid(pid: str) -> int | None:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Gid:"):
                return int(line.split()[4])
    return None


def _comm(pid: str) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()
