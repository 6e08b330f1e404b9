"""`meshnet explain --trace`: send one real packet in the pod and let the kernel tell its path.

A temporary table `inet meshnet-trace-<pid>` hooks before raw (priority -350) and sets
`meta nftrace set 1` on exactly the packet (addresses, ports, protocol, SYN for TCP); `nft -a
monitor trace` reports every rule the packet matched, with its handle, in every nf_tables table,
iptables-nft's included. The handles are mapped back to rule positions (`nft -j list ruleset`)
and so to the model's rules, and the observed path is compared with the one `explain` predicts.

The packet: `out` is a real socket in the namespace as uid/gid (a TCP SYN from connect(), one UDP
datagram); `in` is one raw frame sent from the other end of the interface (the veth peer, found by
its ifindex) so that it really arrives on that interface. The table is deleted in `finally`; a table
left by a killed meshnet is deleted by the next run (its pid is dead). iptables-legacy rules are not
nf_tables rules and cannot be traced this way.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from meshnet.errors import MeshnetError, UsageError
from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.diagnose.explain.packet import Packet
    from meshnet.diagnose.explain.result import Explanation
    from meshnet.plan.model import Family
    from meshnet.state.live import LiveState

TABLE_PREFIX = "meshnet-trace-"
MODELED = ("raw", "mangle", "nat")
_EVENT = re.compile(r"^trace id (?P<id>\w+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) "
                    r"(?P<what>packet:|rule|policy|verdict|unknown)(?P<rest>.*)$")
_HOP = re.compile(r"^(?P<chain>\S+) rule (?P<i>\d+) \(")


class CannotTrace(MeshnetError):
    exit_code = 2


@dataclass(frozen=True)
class Hop:
    table: str
    chain: str
    index: int  # 1-based position in the chain, as explain numbers rules
    text: str = ""

    def key(self) -> tuple[str, str, int]:
        return (self.table, self.chain, self.index)

    def line(self) -> str:
        return f"{self.table} {self.chain} rule {self.index}" + (f" ({self.text})" if self.text else "")


@dataclass
class Trace:
    backend: str
    predicted: list[Hop]
    observed: list[Hop]
    events: list[str] = field(default_factory=list)  # the kernel's lines of the traced packet
    notes: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # rules outside the model that decided something

    @property
    def matches(self) -> bool:
        return [h.key() for h in self.predicted] == [h.key() for h in self.observed] and not self.foreign

    def lines(self) -> list[str]:
        out = [f"  predicted: {' -> '.join(h.line() for h in self.predicted) or '(no rule matches)'}",
               f"  observed:  {' -> '.join(h.line() for h in self.observed) or '(no rule matched)'}"]
        if self.foreign:
            out += [f"  finding trace-mismatch: the kernel also applied a rule explain does not model: {f}"
                    for f in self.foreign]
        if self.matches:
            out.append("  trace: the kernel took exactly the predicted path")
        elif [h.key() for h in self.predicted] != [h.key() for h in self.observed]:
            first = next((i for i, (a, b) in enumerate(zip(self.predicted, self.observed, strict=False))
                          if a.key() != b.key()), min(len(self.predicted), len(self.observed)))
            out.append(f"  finding trace-mismatch: the kernel's path differs from the model's at hop {first + 1}")
        out += [f"  kernel: {e}" for e in self.events]
        out += [f"  note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "matches": self.matches, "foreign": self.foreign,
                "predicted": [h.line() for h in self.predicted], "observed": [h.line() for h in self.observed],
                "events": self.events, "notes": self.notes}


# ----------------------------------------------------------------- the temporary table
def _nft(netns: Netns, *args: str, input: str | None = None, check: bool = True) -> str:
    return netns.run(["nft", *args], input=input, check=check).stdout


def remove_stale_tables(netns: Netns) -> list[str]:
    """Delete trace tables whose meshnet process is gone (killed before its `finally`)."""
    removed = []
    for line in _nft(netns, "list", "tables", check=False).splitlines():
        words = line.split()
        if len(words) == 3 and words[2].startswith(TABLE_PREFIX):
            pid = words[2][len(TABLE_PREFIX):]
            if pid.isdigit() and not _alive(int(pid)):
                _nft(netns, "delete", "table", words[1], words[2], check=False)
                removed.append(words[2])
    return removed


NFNLGRP_NFTRACE = 9  # the multicast group `nft monitor trace` joins
SUBSCRIBE_WAIT, FIRST_EVENT_WAIT, QUIET = 10.0, 5.0, 0.3  # seconds; generous: loaded CI machines


class _Reader:
    """Collects the monitor's lines in a thread, so waiting for them has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.lines: list[str] = []
        self._last = time.monotonic()
        self._proc = proc
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._last = time.monotonic()

    def settle(self) -> None:
        """Wait for the first trace line (bounded), then until the monitor has been quiet a moment."""
        deadline = time.monotonic() + FIRST_EVENT_WAIT
        while not any(ln.startswith("trace id") for ln in self.lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        while time.monotonic() - self._last < QUIET and time.monotonic() < deadline + QUIET:
            time.sleep(0.02)


def trace_subscribers(netns: Netns) -> set[str]:
    """Inodes of the namespace's netfilter netlink sockets in the trace group (/proc/net/netlink)."""
    bit = 1 << (NFNLGRP_NFTRACE - 1)
    out = set()
    for line in netns.read_proc_net("netlink").splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[1] == "12" and int(cols[3], 16) & bit:
            out.add(cols[9])
    return out


def _wait_subscribed(netns: Netns, monitor: subprocess.Popen[str], before: set[str]) -> None:
    """Until a new trace-group socket (the monitor's) exists: then no event of our packet is missed."""
    deadline = time.monotonic() + SUBSCRIBE_WAIT
    while time.monotonic() < deadline:
        if monitor.poll() is not None:
            raise CannotTrace("`nft monitor trace` exited at once: this nft cannot trace")
        if trace_subscribers(netns) - before:
            return
        time.sleep(0.02)
    raise CannotTrace(f"`nft monitor trace` did not subscribe within {SUBSCRIBE_WAIT:g}s")


def _die_with_parent() -> None:
    """In the monitor's child: a SIGKILLed meshnet must not leave `nft monitor` running."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _selector(p: Packet) -> str:
    ip = "ip" if p.family == 4 else "ip6"
    sel = (f"meta l4proto {p.proto} {ip} saddr {p.src} {ip} daddr {p.dst} "
           f"{p.proto} sport {p.sport} {p.proto} dport {p.dport}")
    if p.proto == "tcp":
        sel += " tcp flags & (syn | ack) == syn"  # the connection's first packet only
    return sel


def table_text(name: str, p: Packet) -> str:
    hook = "output" if p.direction == "out" else "prerouting"
    return (f"table inet {name} {{\n  chain trace {{\n    type filter hook {hook} priority -350; policy accept;\n"
            f"    {_selector(p)} meta nftrace set 1\n  }}\n}}\n")


# ----------------------------------------------------------------- sending the packet
_OUT_SCRIPT = r'''
import socket, sys
fam, proto, src, sport, dst, dport = sys.argv[1:7]
af = socket.AF_INET if fam == "4" else socket.AF_INET6
s = socket.socket(af, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((src, int(sport)))
except OSError as e:
    print("bind-error", e.strerror)
    sys.exit(0)
s.settimeout(0.7)
try:
    if proto == "tcp":
        s.connect((dst, int(dport)))
    else:
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07meshnet\x00\x00\x01\x00\x01", (dst, int(dport)))
    print("sent")
except OSError as e:
    print("error", e.errno, e.strerror)
'''


def send_out(netns: Netns, p: Packet) -> str:
    argv = [sys.executable, "-I", "-S", "-c", _OUT_SCRIPT, str(p.family), p.proto, str(p.src), str(p.sport),
            str(p.dst), str(p.dport)]
    if p.uid not in (None, 0) or p.gid not in (None, 0):
        uid = p.uid or 0
        gid = p.gid if p.gid is not None else uid
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
    cp = netns.run(argv, check=False, timeout=10)
    said = (cp.stdout.strip() or cp.stderr.strip()).splitlines()[-1] if (cp.stdout or cp.stderr) else ""
    if said.startswith("bind-error"):
        raise UsageError(f"cannot send from {p.src}:{p.sport} in the pod ({said.removeprefix('bind-error ')}): "
                         "the source of an `out` packet must be one of the pod's addresses")
    return said


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(p: Packet, dst_mac: bytes, src_mac: bytes) -> bytes:
    """Ethernet + IPv4/IPv6 + a TCP SYN or a small UDP datagram, checksums filled."""
    src, dst = p.src.packed, p.dst.packed
    if p.proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", p.sport, p.dport, 0x6D6E0001, 0, 5 << 4, 0x02, 64240, 0, 0)
        proto = 6
    else:
        payload = b"meshnet-trace"
        l4 = struct.pack("!HHHH", p.sport, p.dport, 8 + len(payload), 0) + payload
        proto = 17
    if p.family == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(l4), proto)
    c = _csum(pseudo + l4) or 0xFFFF
    off = 16 if proto == 6 else 6
    l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2:]
    if p.family == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0x6D6E, 0x4000, 64, proto, 0, src, dst)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        ethertype = 0x0800
    else:
        hdr = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst)
        ethertype = 0x86DD
    return dst_mac + src_mac + struct.pack("!H", ethertype) + hdr + l4


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str
    mac: bytes
    peer_ifindex: int | None
    peer_netns: str | None  # a /run/netns name when `ip` knows it


def _links(netns: Netns) -> list[Link]:
    out = []
    for line in netns.run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        m = re.match(r"^(\d+): ([^:@]+)(?:@if(\d+)|@\S+)?:", line)
        if not m:
            continue
        mac = re.search(r"link/\w+ ([0-9a-f:]{17})", line)
        ns = re.search(r"link-netns (\S+)", line)
        out.append(Link(int(m[1]), m[2], bytes.fromhex(mac[1].replace(":", "")) if mac else b"\0" * 6,
                        int(m[3]) if m[3] else None, ns[1] if ns else None))
    return out


def _peer_side(netns: Netns, iface: str) -> tuple[Netns, Link, Link]:
    """(namespace of the other end, that end, our end) of the veth `iface`."""
    from meshnet.apply.netns import Netns as NetnsCls

    ours = next((lk for lk in _links(netns) if lk.name == iface), None)
    if ours is None:
        raise UsageError(f"no interface {iface!r} in {netns.label}")
    if ours.peer_ifindex is None:
        raise CannotTrace(f"cannot send a packet that arrives on {iface}: it is not a veth (no peer to send from)")
    candidates = [ours.peer_netns] if ours.peer_netns else []
    candidates += ["/proc/1/ns/net"] + sorted(os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
    for cand in candidates:
        try:
            ns = NetnsCls.resolve(netns=cand)
        except MeshnetError:
            continue
        if ns.inode == netns.inode:
            continue
        for lk in _links(ns):
            if lk.ifindex == ours.peer_ifindex and lk.peer_ifindex == ours.ifindex:
                return ns, lk, ours
    raise CannotTrace(f"cannot find the other end of {iface} (ifindex {ours.peer_ifindex}) to send from")


def send_in(netns: Netns, p: Packet) -> str:
    iface = p.iif or "eth0"
    if iface == "lo":
        sender, link = netns, Link(1, "lo", b"\0" * 6, None, None)
        dst_mac = b"\0" * 6
    else:
        sender, link, ours = _peer_side(netns, iface)
        dst_mac = ours.mac
    s = sender.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with s:
        s.bind((link.name, 0))
        s.send(frame(p, dst_mac, link.mac))
    return f"sent one frame from {link.name} in {sender.label}"


# ----------------------------------------------------------------- reading the trace
def ruleset_index(netns: Netns) -> tuple[dict[tuple[str, str, str, int], int], dict[tuple[str, str, str], str]]:
    """From `nft -j list ruleset`: (family, table, chain, handle) -> 1-based rule position, and
    (family, table, chain) -> hook of each base chain."""
    data = json.loads(_nft(netns, "-j", "list", "ruleset") or "{}")
    count: dict[tuple[str, str, str], int] = {}
    positions: dict[tuple[str, str, str, int], int] = {}
    hooks: dict[tuple[str, str, str], str] = {}
    for item in data.get("nftables", []):
        c = item.get("chain")
        if c and c.get("hook"):
            hooks[(c["family"], c["table"], c["name"])] = c["hook"]
        r = item.get("rule")
        if not r:
            continue
        k = (r["family"], r["table"], r["chain"])
        count[k] = count.get(k, 0) + 1
        positions[(*k, int(r["handle"]))] = count[k]
    return positions, hooks


def parse_events(lines: list[str], hook: str, hooks: dict[tuple[str, str, str], str] | None = None) \
        -> tuple[list[tuple[str, str, str, int | None, str]], list[str]]:
    """The first traced packet's rule events at `hook`: (family, table, chain, handle, line).
    `hooks` names each base chain's hook; without it a base chain is known by Istio's names."""
    first_id = None
    events: list[tuple[str, str, str, int | None, str]] = []
    raw: list[str] = []
    in_hook = False
    for line in lines:
        m = _EVENT.match(line.strip())
        if not m or m["table"].startswith(TABLE_PREFIX):
            continue
        first_id = first_id or m["id"]
        if m["id"] != first_id:
            continue
        if m["what"] == "packet:":
            known = (hooks or {}).get((m["family"], m["table"], m["chain"]))
            in_hook = (known or m["chain"].lower()) == hook
            continue
        if not in_hook:
            continue
        raw.append(line.strip().split(" ", 3)[3])
        if m["what"] == "rule":
            h = re.search(r"# handle (\d+)", m["rest"])
            events.append((m["family"], m["table"], m["chain"], int(h[1]) if h else None, m["rest"].strip()))
    return events, raw


def predicted_hops(ex: Explanation) -> list[Hop]:
    out = []
    for path in ex.paths:
        table = path.split(" ", 1)[0]
        for part in path.split(" -> ")[1:]:
            m = _HOP.match(part)
            if m:
                out.append(Hop(table, m["chain"], int(m["i"]), part[m.end():].rsplit(")", 1)[0]))
    return out


# Verdicts / statements of a rule outside the model that change where the packet goes.
_DECISIVE = re.compile(r"\(verdict (drop|queue|stolen)\)|\b(redirect|dnat|snat|masquerade|tproxy|reject)\b")


def observed_hops(events: list[tuple[str, str, str, int | None, str]], positions: dict[tuple[str, str, str, int], int],
                  backend: str, live: LiveState, family: Family, notes: list[str],
                  foreign: list[str] | None = None) -> list[Hop]:
    from meshnet.apply.backends import NFTABLES

    out = []
    for fam, table, chain, handle, text in events:
        if backend == NFTABLES:
            outside = fam != "inet" or not table.startswith("istio-proxy-")
        else:
            outside = fam not in ("ip", "ip6") or table not in MODELED
        if outside:
            where = f"{fam} {table} {chain}: {text}"
            if _DECISIVE.search(text) and foreign is not None:
                foreign.append(where)
            else:
                notes.append(f"the packet also matched a rule explain does not walk: {where}")
            continue
        model_table = table.removeprefix("istio-proxy-") if backend == NFTABLES else table
        idx = positions.get((fam, table, chain, handle)) if handle is not None else None
        if idx is None:
            notes.append(f"rule handle {handle} in {fam} {table} {chain} is not in the ruleset any more")
            continue
        out.append(Hop(model_table, chain, idx, _model_text(live, backend, family, model_table, chain, idx)))
    return out


def _model_text(live: LiveState, backend: str, family: Family, table: str, chain: str, idx: int) -> str:
    from meshnet.apply.backends import NFTABLES

    if backend == NFTABLES:
        nft_rules = live.nft.rules(table, chain) if live.nft else []
        return nft_rules[idx - 1].body() if idx <= len(nft_rules) else ""
    rules = live.ruleset(backend, family).rules(table, chain)
    return str(rules[idx - 1]) if idx <= len(rules) else ""


# ----------------------------------------------------------------- the whole run
def trace_packet(netns: Netns, packet: Packet) -> tuple[list[Explanation], list[Trace], str]:
    from meshnet.apply.backends import LEGACY
    from meshnet.diagnose.explain.iptables import explain_live
    from meshnet.state.live import read_live

    if packet.state != "NEW":
        raise UsageError("--trace sends a connection's first packet: state must be NEW")
    live = read_live(netns)
    backends = live.istio_backends()
    if LEGACY in backends:
        raise CannotTrace("iptables-legacy rules cannot be traced: they are not nf_tables rules, so nftrace "
                          "does not see them (use `meshnet explain` without --trace)")
    if not backends:
        raise CannotTrace(f"no Istio rules in {netns.label} to trace")
    notes: list[str] = []
    if packet.direction == "out" and packet.uid is None and packet.gid is None:
        from meshnet.lite.records import replace

        packet = replace(packet, uid=0, gid=0)
        notes.append("no uid=/gid= given: the packet is sent as root (uid 0, gid 0)")
    if packet.direction == "in" and packet.iif is None:
        from meshnet.diagnose.checks.capture_probes import pod_addresses

        main = pod_addresses(netns).get(packet.family)
        from meshnet.lite.records import replace

        packet = replace(packet, iif=main.iface if main else "eth0")
    explanations = explain_live(netns, packet, live)
    from meshnet.apply.backends.nslock import locked

    with locked(netns):  # adding and deleting a table is a write: one writer per namespace
        removed, sent, lines = _traced_send(netns, packet, explanations[0].packet)
    hook = "output" if packet.direction == "out" else "prerouting"
    positions, hooks = ruleset_index(netns)
    events, raw = parse_events(lines, hook, hooks)
    traces = []
    for ex in explanations:
        tnotes = [*notes, *(f"removed a stale trace table: {t}" for t in removed)]
        if not raw:
            tnotes.append(f"the kernel reported no trace for the packet ({sent})")
        foreign: list[str] = []
        observed = observed_hops(events, positions, ex.backend, live, packet.family, tnotes, foreign)
        traces.append(Trace(ex.backend, predicted_hops(ex), observed, raw, tnotes, foreign))
    return explanations, traces, sent


def _traced_send(netns: Netns, packet: Packet, resolved: Packet) -> tuple[list[str], str, list[str]]:
    """Trace table in, monitor on, the packet out, table gone (also on failure); the monitor's lines."""
    removed = remove_stale_tables(netns)
    name = f"{TABLE_PREFIX}{os.getpid()}"
    monitor: subprocess.Popen[str] | None = None
    lines: list[str] = []
    sent = ""
    try:
        _nft(netns, "-f", "-", input=table_text(name, packet))
        before = trace_subscribers(netns)
        monitor = netns.popen(["nft", "-a", "monitor", "trace"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, preexec_fn=_die_with_parent)
        reader = _Reader(monitor)
        _wait_subscribed(netns, monitor, before)
        sent = send_out(netns, resolved) if packet.direction == "out" else send_in(netns, packet)
        reader.settle()
    finally:
        if monitor is not None:
            monitor.terminate()
            try:
                monitor.wait(timeout=5)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait()
            lines = reader.lines
        _nft(netns, "delete", "table", "inet", name, check=False)
    return removed, sent, lines
