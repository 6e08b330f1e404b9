"""istio-validation: prove that the proxy uid's traffic really is redirected in a namespace.

As Istio's `pkg/validation`: listeners on 127.0.0.1:15001 and :15006 (SO_REUSEADDR+SO_REUSEPORT),
a client running as the proxy uid dials 127.0.0.6:<probe port> from 127.0.0.1, and the accepted
connection's SO_ORIGINAL_DST must be that probe port. The owner match needs a client socket that
really belongs to the proxy uid, so:

* running as that uid already (the istio-validation container: uid 1337, no capabilities), the
  client is an in-process non-blocking connect in the same loop as the listeners, like Istio's;
* otherwise a `setpriv` child switches uid (needs CAP_SETUID + CAP_SETGID; one line says so if
  they are missing, before anything is applied).

In the namespace meshnet runs in, sockets are opened directly; for another one (`meshnet validate
--netns`) they come from a setns thread (Netns.socket) and the child runs under nsenter.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import subprocess
import sys
import time

from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError, ValidationFailed

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


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    """Listeners on the proxy ports; like Istio, one that cannot bind is skipped, none is an error."""
    out: list[socket.socket] = []
    errors: list[str] = []
    for port in LISTEN_PORTS:
        s = netns.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(16)
            s.setblocking(False)
        except OSError as exc:
            s.close()
            errors.append(f"{_hostport(host, port)}: {exc.strerror}")
            continue
        out.append(s)
    if not out:
        raise ApplyError(f"[{netns.label}] validation cannot listen on any proxy port ({'; '.join(errors)})")
    return out


def client_mode(uid: int, gid: int) -> str:
    """How the probe client becomes the proxy uid, or CapabilityError naming what is missing.

    "self": this process already is that uid (the istio-validation container: uid 1337, no caps), so
    it dials in-process, like Istio. "setpriv": a child switches uid/gid (CAP_SETUID + CAP_SETGID),
    e.g. `meshnet validate --netns` from a node. Anything else cannot be captured by the owner match.
    """
    if os.geteuid() == uid:
        return "self"
    from meshnet.apply import caps

    needs = [caps.SETUID, caps.SETGID]
    lacking = caps.missing(needs)
    if lacking:
        raise caps.CapabilityError(
            f"the validation client must run as the proxy uid {uid} (gid {gid}) for the rules to capture it; "
            + caps.message(f"switching from uid {os.geteuid()}", needs, lacking)
            + f" (run it as uid {uid}, as the istio-validation container does)")
    return "setpriv"


class _Dialer:
    """The in-process client: a non-blocking connect from `src` to `dst:port`, retried until told to stop."""

    RETRY_SECONDS = 0.2
    CONNECTED_GRACE = 1.0  # connected, yet no listener of ours accepted: someone else has the port

    def __init__(self, netns: Netns, family: int, src: str, dst: str, port: int) -> None:
        self.netns, self.family, self.src, self.dst, self.port = netns, family, src, dst, port
        self.sock: socket.socket | None = None
        self.next_try = 0.0
        self.connected = False
        self.last = "no attempt"

    def start(self, sel: selectors.BaseSelector) -> None:
        if time.time() < self.next_try:
            return
        if self.sock is not None:
            if not self.connected:
                return
            self.close()  # connected long enough without landing on a listener: dial again
        s = self.netns.socket(self.family, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((self.src, 0))
            err = s.connect_ex((self.dst, self.port))
        except OSError as exc:
            err = exc.errno or 0
        if err not in (0, errno.EINPROGRESS):
            self._failed(s, err)
            return
        self.sock = s
        sel.register(s, selectors.EVENT_WRITE, self)  # the key names its dialer

    def writable(self, sel: selectors.BaseSelector) -> None:
        s = self.sock
        if s is None:
            return
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sel.unregister(s)
            self.sock = None
            self._failed(s, err)
        else:
            sel.unregister(s)  # connected: the listener side decides; keep the socket open until then
            self.connected = True
            self.next_try = time.time() + self.CONNECTED_GRACE
            self.last = f"{_hostport(self.dst, self.port)} answered without being redirected to a proxy port"

    def _failed(self, s: socket.socket, err: int) -> None:
        s.close()
        self.last = f"{os.strerror(err)} ({_hostport(self.dst, self.port)})"
        self.next_try = time.time() + self.RETRY_SECONDS

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.connected = False


def validate(netns: Netns, *, probe_port: int = 15002, timeout: float = 5.0, ipv6: bool = False,
             uid: int = 1337, gid: int = 1337) -> str:
    """Return a success message, or raise ValidationFailed (exit 126) when nothing was redirected in time."""
    mode = client_mode(uid, gid)
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    host, src, dst = ("::1", "::1", "::6") if ipv6 else ("127.0.0.1", "127.0.0.1", "127.0.0.6")
    listeners = _listeners(netns, family, host)
    deadline = time.time() + timeout
    dialer = _Dialer(netns, family, src, dst, probe_port) if mode == "self" else None
    client = None if dialer is not None else _spawn_client(netns, family, src, dst, probe_port, deadline, timeout,
                                                           uid, gid)
    seen: list[int] = []
    try:
        with selectors.DefaultSelector() as sel:
            for s in listeners:
                sel.register(s, selectors.EVENT_READ, "listener")
            while time.time() < deadline:
                if dialer is not None:
                    dialer.start(sel)
                for key, _ in sel.select(timeout=max(0.0, min(0.05, deadline - time.time()))):
                    if isinstance(key.data, _Dialer):
                        key.data.writable(sel)
                        continue
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)  # the listeners are registered as sockets
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    with conn:
                        try:
                            port = _original_port(conn, family)
                        except OSError:
                            port = 0  # not NATed: reached a listener directly
                        try:
                            conn.sendall(f"{port}\n".encode())
                        except OSError:
                            pass  # the client may be gone; the verdict is ours
                    seen.append(port)
                    if port == probe_port:
                        return f"validation passed in {netns.label}: {_hostport(dst, probe_port)} was " \
                               f"redirected to {_hostport(host, listener.getsockname()[1])}"
                    if dialer is not None:
                        dialer.close()  # landed with the wrong original port: try again
                if client is not None and client.poll() is not None and client.returncode != 0:
                    break  # the client gave up (or could not start)
    finally:
        for s in listeners:
            s.close()
        if dialer is not None:
            dialer.close()
        why = _stop_client(client) if client is not None else dialer.last if dialer is not None else ""
    detail = f"redirected to the wrong port(s) {sorted(set(seen))}" if seen else why
    raise ValidationFailed(f"{FAILURE_MESSAGE} ({netns.label}: {_hostport(dst, probe_port)} as uid {uid}: {detail})")


def _spawn_client(netns: Netns, family: int, src: str, dst: str, port: int, deadline: float, timeout: float,
                  uid: int, gid: int) -> subprocess.Popen[bytes]:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            _client_python(), "-I", "-S", "-c", _CLIENT, str(int(family)), src, dst, str(port),
            str(deadline - min(0.3, timeout / 4))]  # the client stops first, so it can say why
    return netns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")


def _stop_client(client: subprocess.Popen[bytes]) -> str:
    if client.poll() is None:
        client.kill()
    out, err = client.communicate(timeout=5)
    why = (out or b"").decode(errors="replace").strip().splitlines()[-1:] or \
        (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["validation timeout"]
    return why[0].removeprefix("ERROR ")
