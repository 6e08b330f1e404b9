"""Shared real-kernel test topology: throwaway namespaces, a landing server and a probe client.

Layout of a :class:`Topology` (all names ``mn-<8 hex>-<role>``, nothing touches the host ns)::

    pod ns  (mn-XXXX-pod)                       peer ns (mn-XXXX-peer)
      lo up                                        lo up
      eth0  10.A.B.2/24  fd00:R:0::2/64  <--veth-->  eth0  10.A.B.1/24  fd00:R:0::1/64
      eth1  10.A.B+1.2/24 ...            <--veth-->  eth0 in mn-XXXX-eth1 (extra_pod_ifaces=["eth1"])
      dum0  (dummy, up, no address; a dead-end veth if the kernel lacks dummy) (dummy_pod_ifaces=["dum0"])

No default route anywhere (use :meth:`Topology.add_default_route` if a test needs one).
IPv6 addresses use ``nodad`` (DAD is off in our namespaces) and each veth end has a permanent
IPv6 neighbour entry for the other end, so the first IPv6 packet does not wait ~1 s for the
kernel's delayed multicast join. Setup takes ~20-50 ms.

Cleanup (``close()`` / leaving the ``with``) always runs, even if setup failed half-way:
servers and spawned processes are killed by PID and reaped, then every namespace this
topology created is deleted (its veths go with it).

**connect() convention**: it always returns a dict. On success it is the landing server's
JSON reply (it has a ``"name"`` key, plus ``"client"`` and ``"reply_from"`` added by the
client); on failure it is ``{"error": kind, "detail": str}`` with kind one of
``timeout | refused | unreachable | reset | no_reply | bad_reply | oserror``. A broken harness
(client crashed, nsenter failed) raises RuntimeError instead. So::

    r = connect(topo.pod, topo.peer_ip4, 8080)
    assert r.get("name") == "peer", r          # r shows the error if it failed
    assert r["orig_dst"] is None

Servers and clients run as ``/usr/bin/python3 -I -S -c <script source>`` under
``nsenter --net=... -- setpriv --reuid U --regid G --clear-groups``: the script source is
passed inline, so non-root uids need no access to the repo or the venv.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import random
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshnet.apply.netns import Netns

HELPERS = Path(__file__).resolve().parent  # client.py, landing_server.py
# System python: /root (where the venv's interpreter lives) is 0700, so uid 1337 could not exec it.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
NS_PREFIX = "mn-"

_SOURCES: dict[str, str] = {}
# Every namespace any Topology of this process created: lets a test assert nothing leaked.
CREATED_NAMESPACES: list[str] = []


def _source(name: str) -> str:
    if name not in _SOURCES:
        _SOURCES[name] = (HELPERS / name).read_text()
    return _SOURCES[name]


def is_root() -> bool:
    return os.geteuid() == 0


def _ip(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(["ip", *args], input=input, text=True, capture_output=True, timeout=10)
    if check and cp.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {cp.stderr.strip() or cp.returncode}")
    return cp


def ns_names() -> set[str]:
    """Names listed by ``ip netns list`` (first column)."""
    out = _ip("netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _drop_privs(uid: int, gid: int | None, caps: Sequence[str] = ()) -> list[str]:
    if uid == 0 and gid in (None, 0) and not caps:
        return []
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", "--clear-groups"]
    if caps and uid != 0:
        # Ambient caps survive the uid change + exec (e.g. NET_ADMIN for an IP_TRANSPARENT proxy).
        spec = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in caps)
        argv += [f"--inh-caps={spec}", f"--ambient-caps={spec}"]
    return [*argv, "--"]


def _no_dad() -> None:
    for conf in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/accept_dad", "w") as f:
            f.write("0")


def _unsettled(label: str, ifnames: Sequence[str]) -> list[str]:
    """What the kernel still has to do on ``ifnames`` in ``label``: empty once settled.

    After ``link set up`` the veth carrier, the IPv6 link-local address (generated only once
    the carrier is up), the end of the tentative state of addresses added before ``up`` and
    the routes that lose their ``linkdown`` flag all arrive asynchronously (linkwatch, up to
    ~1 s on a loaded machine). Tests that snapshot routes or addresses must start after that.
    """
    links = json.loads(_ip("-n", label, "-j", "addr", "show").stdout)
    pending = []
    for link in links:
        name = link["ifname"]
        addrs = link.get("addr_info", [])
        pending += [f"{name}: {a['local']} tentative" for a in addrs if a.get("tentative")]
        if name not in ifnames:
            continue
        if "LOWER_UP" not in link.get("flags", []):
            pending.append(f"{name}: no carrier")
        elif not any(a.get("family") == "inet6" and a.get("scope") == "link" for a in addrs):
            pending.append(f"{name}: no IPv6 link-local yet")
    routes = _ip("-n", label, "-6", "route", "show", "table", "all").stdout
    routes += _ip("-n", label, "-4", "route", "show", "table", "all").stdout
    pending += [f"route {r.strip()}" for r in routes.splitlines() if "linkdown" in r]
    return pending


def wait_settled(label: str, ifnames: Sequence[str], timeout: float = 15.0) -> None:
    """Bounded wait until carrier, link-local addresses and routes of ``ifnames`` are final."""
    deadline = time.monotonic() + timeout
    while pending := _unsettled(label, ifnames):
        if time.monotonic() > deadline:
            raise RuntimeError(f"netns {label} did not settle in {timeout:.0f} s: {'; '.join(pending)}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen[Any], grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL, always reap. Only ever our own child, by PID."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            f.close()


# --------------------------------------------------------------------------- servers
@dataclass
class ServerHandle:
    """A running landing server. ``stop()`` is idempotent."""

    proc: subprocess.Popen[bytes]
    ns: Netns
    name: str
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    uid: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        _LIVE.pop(self.proc.pid, None)
        _kill(self.proc)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# pid -> handle of every server/process started here and not yet stopped: a Topology stops
# those in its namespaces, atexit stops the rest.
_LIVE: dict[int, ServerHandle | _Spawned] = {}


@dataclass
class _Spawned:
    proc: subprocess.Popen[Any]
    ns: Netns

    def stop(self) -> None:
        _LIVE.pop(self.proc.pid, None)
        _kill(self.proc)


@atexit.register
def _stop_all() -> None:
    for h in list(_LIVE.values()):
        h.stop()


def start_server(
    ns: Netns,
    name: str,
    tcp_ports: Sequence[int] = (),
    udp_ports: Sequence[int] = (),
    uid: int = 0,
    gid: int | None = None,
    bind4: str | None = "0.0.0.0",
    bind6: str | None = "::",
    transparent: bool = False,
    caps: Sequence[str] | None = None,
    timeout: float = 5.0,
    mark: int = 0,
) -> ServerHandle:
    """Start the landing server inside ``ns`` as uid/gid and wait for READY.

    ``bind4``/``bind6`` = None (or "") disables that family. With ``transparent=True`` and a
    non-root uid, NET_ADMIN+NET_RAW are kept as ambient caps (IP_TRANSPARENT needs them)
    unless ``caps`` says otherwise.
    """
    if not tcp_ports and not udp_ports:
        raise ValueError("start_server needs at least one TCP or UDP port")
    if caps is None:
        caps = ("net_admin", "net_raw") if transparent else ()
    args = ["--name", name, "--bind4", bind4 or "", "--bind6", bind6 or ""]
    if tcp_ports:
        args += ["--tcp", ",".join(map(str, tcp_ports))]
    if udp_ports:
        args += ["--udp", ",".join(map(str, udp_ports))]
    if transparent:
        args.append("--transparent")
    if mark:
        args += ["--mark", str(mark)]
    argv = [*_drop_privs(uid, gid, caps), PYTHON, "-I", "-S", "-c", _source("landing_server.py"), *args]
    proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    handle = ServerHandle(proc, ns, name, tuple(tcp_ports), tuple(udp_ports), uid)
    _LIVE[proc.pid] = handle
    try:
        _wait_ready(proc, timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(proc)
            raise RuntimeError(f"landing server not READY after {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # exited before READY: show why (bind error, setpriv, nsenter ...)
            proc.wait(5)
            err = proc.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"landing server exited ({proc.returncode}) before READY: {err}")
        buf += chunk
    if buf.split(b"\n", 1)[0].strip() != b"READY":
        _kill(proc)
        raise RuntimeError(f"landing server printed {buf!r} instead of READY")


# --------------------------------------------------------------------------- client
def connect(
    ns: Netns,
    dst_ip: str,
    dst_port: int,
    *,
    proto: str = "tcp",
    uid: int = 0,
    gid: int | None = None,
    src_ip: str | None = None,
    src_port: int | None = None,
    timeout: float = 3.0,
    message: str = "hello",
    mark: int = 0,
) -> dict[str, Any]:
    """One connection (TCP) or datagram (UDP) from ``ns`` as uid/gid; see module doc for the result."""
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be tcp or udp, not {proto!r}")
    args = ["--dst", dst_ip, "--port", str(dst_port), "--proto", proto, "--timeout", str(timeout)]
    args += ["--message", message]
    if src_ip:
        args += ["--src", src_ip]
    if src_port:
        args += ["--sport", str(src_port)]
    if mark:
        args += ["--mark", str(mark)]
    argv = [*_drop_privs(uid, gid), PYTHON, "-I", "-S", "-c", _source("client.py"), *args]
    cp = subprocess.run(
        ns.argv(argv), capture_output=True, text=True, timeout=timeout + 10, cwd="/", stdin=subprocess.DEVNULL
    )
    lines = cp.stdout.strip().splitlines()
    if cp.returncode != 0 or not lines:
        raise RuntimeError(f"client failed in {ns.label} (rc {cp.returncode}): {cp.stderr.strip()}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- topology
@dataclass
class Link:
    """One veth from the pod to a peer namespace, with its addresses."""

    pod_if: str
    peer: Netns
    peer_if: str
    pod_ip4: str
    peer_ip4: str
    pod_ip6: str | None
    peer_ip6: str | None
    prefix4: int = 24
    prefix6: int = 64


@dataclass
class Topology:
    """pod <-veth-> peer namespaces (+ optional extra links/dummies). Use as a context manager."""

    ipv6: bool = True
    extra_pod_ifaces: Sequence[str] = ()
    dummy_pod_ifaces: Sequence[str] = ()
    prefix: str = field(default_factory=lambda: f"{NS_PREFIX}{secrets.token_hex(4)}")
    names: list[str] = field(default_factory=list, init=False)  # namespaces we created
    links: dict[str, Link] = field(default_factory=dict, init=False)
    _pod: Netns | None = field(default=None, init=False, repr=False)
    _procs: list[ServerHandle | _Spawned] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        rnd = random.Random()
        self._net4 = (rnd.randint(1, 254), rnd.randint(0, 200))  # 10.A.B+i.0/24 for link i
        self._net6 = rnd.randint(1, 0xFFFF)  # fd00:R:i::/64 for link i

    # -- lifecycle
    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Topology:
        try:
            self._pod = self._new_ns("pod")
            self.add_link("eth0", peer_name="peer")
            for ifname in self.extra_pod_ifaces:
                self.add_link(ifname)
            for ifname in self.dummy_pod_ifaces:
                self.add_dummy(ifname)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop our processes (by PID), then delete our namespaces. Safe to call twice."""
        mine = {Netns(f"/run/netns/{n}", n).path for n in self.names}
        for h in [*self._procs, *(h for h in list(_LIVE.values()) if h.ns.path in mine)]:
            h.stop()
        self._procs.clear()
        errors = []
        for name in reversed(self.names):
            cp = _ip("netns", "del", name, check=False)
            if cp.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
                errors.append(f"{name}: {cp.stderr.strip()}")
        self.names.clear()
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))

    def _new_ns(self, role: str) -> Netns:
        name = f"{self.prefix}-{role}"
        self.names.append(name)  # before creating: a half-created ns is cleaned up too
        CREATED_NAMESPACES.append(name)
        _ip("netns", "add", name)
        ns = Netns.resolve(name)
        # No DAD at all (also for link-locals): a tentative link-local delays the first IPv6
        # neighbour solicitation by ~1 s. Set before any interface exists so "default" applies.
        ns.call_in(_no_dad)
        return ns

    # -- building blocks
    def add_link(self, pod_if: str, peer_name: str | None = None) -> Link:
        """New veth ``pod_if`` in the pod to ``eth0`` of a new peer ns with its own subnet."""
        i = len(self.links)
        peer = self._new_ns(peer_name or pod_if)
        a, b = self._net4
        net4 = f"10.{a}.{(b + i) % 256}"
        # Canonical (compressed) strings: they must compare equal to what sockets report.
        net6 = ipaddress.IPv6Network(f"fd00:{self._net6:x}:{i:x}::/64") if self.ipv6 else None
        link = Link(
            pod_if=pod_if,
            peer=peer,
            peer_if="eth0",
            pod_ip4=f"{net4}.2",
            peer_ip4=f"{net4}.1",
            pod_ip6=str(net6[2]) if net6 else None,
            peer_ip6=str(net6[1]) if net6 else None,
        )
        # Fixed locally-administered MACs so static IPv6 neighbours can be set (see below).
        pod_mac, peer_mac = (":".join(["02", *(f"{x:02x}" for x in secrets.token_bytes(5))]) for _ in "ab")
        # Created directly inside the pod, the other end moved straight into the peer: the
        # host namespace never sees either interface.
        _ip("-n", self.pod.label, "link", "add", pod_if, "address", pod_mac, "type", "veth",
            "peer", "name", "eth0", "address", peer_mac, "netns", peer.label)  # fmt: skip
        for ns, ifname, ip4, ip6, other_ip6, other_mac in (
            (self.pod, pod_if, link.pod_ip4, link.pod_ip6, link.peer_ip6, peer_mac),
            (peer, "eth0", link.peer_ip4, link.peer_ip6, link.pod_ip6, pod_mac),
        ):
            batch = ["link set lo up", f"addr add {ip4}/{link.prefix4} dev {ifname}"]
            if ip6:
                batch.append(f"addr add {ip6}/{link.prefix6} dev {ifname} nodad")
                # The kernel joins the solicited-node group only after linkwatch reports the
                # carrier (up to 1 s later), so the first neighbour solicitation is lost and
                # the first IPv6 connection stalls ~1 s. A permanent neighbour avoids ND.
                batch.append(f"neigh replace {other_ip6} lladdr {other_mac} dev {ifname} nud permanent")
            batch.append(f"link set {ifname} up")
            _ip("-n", ns.label, "-batch", "-", input="\n".join(batch) + "\n")
        wait_settled(self.pod.label, [pod_if])
        wait_settled(peer.label, ["eth0"])
        self.links[pod_if] = link
        return link

    def add_dummy(self, ifname: str) -> None:
        """An extra pod interface with no address and nothing behind it.

        A real ``dummy`` if the kernel has it; this kernel may lack the module, then it is a
        veth whose other end sits (down) in the peer namespace, so it is equally dead.
        """
        cp = _ip("-n", self.pod.label, "link", "add", ifname, "type", "dummy", check=False)
        if cp.returncode != 0:
            other = f"d-{ifname}"[:15]
            _ip("-n", self.pod.label, "link", "add", ifname, "type", "veth", "peer", "name", other,
                "netns", self.peer.label)  # fmt: skip
        _ip("-n", self.pod.label, "link", "set", ifname, "up")
        # A real dummy has a carrier and gets a link-local; the veth stand-in never does.
        wait_settled(self.pod.label, [ifname] if cp.returncode == 0 else [])

    def add_default_route(self, ns: Netns | None = None, link: str = "eth0") -> None:
        """Default route(s) in ``ns`` (default: the pod) via the other end of ``link``."""
        lk = self.links[link]
        if ns is None or ns == self.pod:
            ns, via4, via6, dev = self.pod, lk.peer_ip4, lk.peer_ip6, lk.pod_if
        else:
            via4, via6, dev = lk.pod_ip4, lk.pod_ip6, lk.peer_if
        _ip("-n", ns.label, "route", "add", "default", "via", via4, "dev", dev)
        if via6:
            _ip("-n", ns.label, "-6", "route", "add", "default", "via", via6, "dev", dev)

    def start_server(self, ns: Netns, name: str, **kw: Any) -> ServerHandle:
        """:func:`start_server`, stopped by this topology's close()."""
        h = start_server(ns, name, **kw)
        self._procs.append(h)
        return h

    def spawn(self, ns: Netns, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Any process inside ``ns``; killed (by PID) and reaped by close()."""
        proc = ns.popen(argv, **kw)
        h = _Spawned(proc, ns)
        _LIVE[proc.pid] = h
        self._procs.append(h)
        return proc

    # -- convenience accessors
    @property
    def pod(self) -> Netns:
        if self._pod is None:
            raise RuntimeError("topology not started")
        return self._pod

    @property
    def link(self) -> Link:
        return self.links["eth0"]

    @property
    def peer(self) -> Netns:
        return self.link.peer

    @property
    def pod_ip4(self) -> str:
        return self.link.pod_ip4

    @property
    def peer_ip4(self) -> str:
        return self.link.peer_ip4

    @property
    def pod_ip6(self) -> str | None:
        return self.link.pod_ip6

    @property
    def peer_ip6(self) -> str | None:
        return self.link.peer_ip6

    def peer_of(self, pod_if: str) -> Netns:
        return self.links[pod_if].peer
