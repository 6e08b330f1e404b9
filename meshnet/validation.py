"""istio-validation: prove that the proxy uid's traffic really is redirected in a namespace.

As Istio's `pkg/validation`: listeners on 127.0.0.1:15001 and :15006 (SO_REUSEADDR+SO_REUSEPORT),
a client running as the proxy uid dials 127.0.0.6:<probe port> from 127.0.0.1, and the accepted
connection's SO_ORIGINAL_DST must be that probe port. The listeners are created inside the
namespace from a short-lived setns thread (Netns.socket); the client is a separate process
(nsenter + setpriv) because the owner match needs a socket that really belongs to uid 1337.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import subprocess
import sys
import time

from meshnet.errors import ApplyError, ValidationFailed
from meshnet.netns import Netns

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
LISTEN_PORTS = (15001, 15006)
FAILURE_MESSAGE = (
    "iptables validation failed; workload is not ready for Istio. When using Istio CNI, this can occur if a pod "
    "is scheduled before the node is ready. If installed with 'cni.repair.deletePods=true', this pod should "
    "automatically be deleted and retry. Otherwise, this pod will need to be manually removed so that it is "
    "scheduled on a node with istio-cni running, allowing iptables rules to be established"
)
# Runs as the proxy uid with the system python (-I -S: no site, no cwd, nothing of ours imported).
_CLIENT = r"""
import socket, sys, time
family, src, dst, port, deadline = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
last = "no attempt"
while time.time() < deadline:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(max(0.05, min(1.0, deadline - time.time())))
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        print(s.recv(64).decode(errors="replace").strip(), flush=True)
        sys.exit(0)
    except OSError as exc:
        last = f"{type(exc).__name__}: {exc}"
    finally:
        s.close()
    time.sleep(0.2)
print("ERROR " + last, flush=True)
sys.exit(3)
"""


def _client_python() -> str:
    # The venv's interpreter may sit under a 0700 home that uid 1337 cannot enter.
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _original_port(conn: socket.socket, family: int) -> int:
    if family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        return int(struct.unpack_from("!H", raw, 2)[0])
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return int(struct.unpack_from("!H", raw, 2)[0])


def _listeners(netns: Netns, family: int, host: str) -> list[socket.socket]:
    out: list[socket.socket] = []
    try:
        for port in LISTEN_PORTS:
            s = netns.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(16)
            s.setblocking(False)
    except OSError as exc:
        for s in out:
            s.close()
        raise ApplyError(f"[{netns.label}] validation cannot listen on {host}:{port}: {exc.strerror}") from None
    return out


def validate(netns: Netns, *, probe_port: int = 15002, timeout: float = 5.0, ipv6: bool = False,
             uid: int = 1337, gid: int = 1337) -> str:
    """Return a success message, or raise ValidationFailed (exit 126) when nothing was redirected in time."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    host, src, dst = ("::1", "::1", "::6") if ipv6 else ("127.0.0.1", "127.0.0.1", "127.0.0.6")
    listeners = _listeners(netns, family, host)
    deadline = time.time() + timeout
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            _client_python(), "-I", "-S", "-c", _CLIENT, str(int(family)), src, dst, str(probe_port),
            str(deadline - min(0.3, timeout / 4))]  # the client stops first, so it can say why
    client = netns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    seen: list[int] = []
    try:
        with selectors.DefaultSelector() as sel:
            for s in listeners:
                sel.register(s, selectors.EVENT_READ)
            while time.time() < deadline:
                for key, _ in sel.select(timeout=max(0.0, min(0.2, deadline - time.time()))):
                    try:
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    with conn:
                        try:
                            port = _original_port(conn, family)
                        except OSError:
                            port = 0  # not NATed: reached a listener directly
                        conn.sendall(f"{port}\n".encode())
                    seen.append(port)
                    if port == probe_port:
                        return f"validation passed in {netns.label}: {dst}:{probe_port} was redirected " \
                               f"to {host}:{key.fileobj.getsockname()[1]}"  # type: ignore[union-attr]
                if client.poll() is not None and client.returncode != 0:
                    break  # the client gave up (or could not start)
    finally:
        for s in listeners:
            s.close()
        if client.poll() is None:
            client.kill()
        out, err = client.communicate(timeout=5)
    why = (out or b"").decode(errors="replace").strip().splitlines()[-1:] or \
        (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["validation timeout"]
    detail = f"redirected to the wrong port(s) {seen}" if seen else why[0].removeprefix("ERROR ")
    raise ValidationFailed(f"{FAILURE_MESSAGE} ({netns.label}: {dst}:{probe_port} as uid {uid}: {detail})")
