"""The findings engine: turns a Snapshot into the six kinds of issue 4, each with evidence and advice.

Kinds: tuple-collision, collision-hang, collision-race-drops, collision-risk, table-pressure,
envoy-503-uf. Each collision group (one client ip:port to one destination, redirected to one
capture port) is its own finding, its kind decided by that group alone: race drops (namespace-wide
counters) never hide a remapped pair. Observed collisions win over the prediction: when a collision
is seen, the rules that funnel the ports are attached to it as evidence instead of a separate
collision-risk finding.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshnet.lite.records import dataclass, field

from .entry import CtEntry, GroupKey
from .kernel import HANG_COUNTERS, has_demux_fix
from .snapshot import Snapshot

SEVERITIES = ("info", "warning", "critical")
MITIGATIONS = [
    "intercept inbound traffic with TPROXY instead of REDIRECT (Istio: interceptionMode TPROXY)",
    "set net.ipv4.tcp_early_demux=0 in the pod network namespace",
    "stop the client from reusing one source port for several destination ports (no explicit bind, "
    "or a wider ip_local_port_range)",
    "split the ports across pods, so one pod serves one port",
]


@dataclass
class Finding:
    kind: str
    severity: str
    summary: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "summary": self.summary,
                "evidence": self.evidence, "actions": self.actions, "details": self.details}


def _ev_entry(e: CtEntry) -> dict[str, Any]:
    return {"type": "conntrack", "text": e.line(), "entry": e.to_json()}


def _ev_counter(name: str, value: int, delta: int | None) -> dict[str, Any]:
    txt = f"{name}={value}" + (f" (+{delta} during the sample)" if delta else "")
    return {"type": "counter", "name": name, "value": value, "delta": delta, "text": txt}


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class _Group:
    """Entries of one client ip:port to one destination ip, redirected to one capture ip:port."""

    entries: list[CtEntry]

    @property
    def first(self) -> CtEntry:
        return self.entries[0]

    @property
    def dports(self) -> list[int]:
        seen: list[int] = []
        for e in self.entries:
            if e.dport not in seen:
                seen.append(e.dport)
        return seen

    @property
    def rewritten(self) -> list[CtEntry]:
        return [e for e in self.entries if e.src_rewritten]

    def details(self) -> dict[str, Any]:
        f = self.first
        return {"client": _addr(f.src, f.sport), "destination": f.dst, "ports": self.dports,
                "capture": _addr(f.rsrc, f.rsport),
                "rewritten": [{"dport": e.dport, "sport": e.sport, "new_sport": e.rdport,
                               "new_src": e.rdst, "state": e.state, "unreplied": e.unreplied}
                              for e in self.rewritten]}

    def text(self) -> str:
        f = self.first
        rw = ", ".join(f"the source of :{e.dport} became {_addr(e.rdst, e.rdport)}" for e in self.rewritten)
        base = (f"client {_addr(f.src, f.sport)} reached {f.dst} on ports "
                f"{','.join(map(str, self.dports))}, all redirected to {_addr(f.rsrc, f.rsport)}")
        return base + (f"; {rw}" if rw else "")


def _groups(snap: Snapshot) -> list[_Group]:
    by: dict[GroupKey, list[CtEntry]] = {}
    for e in snap.scan.nat:
        by.setdefault(e.group_key, []).append(e)
    return [_Group(v) for v in by.values()]


def _is_hang(g: _Group, kernel: str | None) -> bool:
    """A remapped SYN that is not answered. Before 6.7 early demux keeps handing its retransmits to
    the wrong socket, so it hangs whether or not its sibling is still in the table; on a fixed (or
    unknown) kernel it only hangs next to a live sibling (a transparent listener)."""
    stuck = [e for e in g.entries if e.state == "SYN_SENT" and e.unreplied and e.src_rewritten]
    if not stuck:
        return False
    if has_demux_fix(kernel) is False:
        return True
    return any(e.state == "ESTABLISHED" and e not in stuck for e in g.entries)


def analyze(snap: Snapshot) -> list[Finding]:
    """One finding per collision group (its kind decided by that group alone), plus the
    namespace-wide ones: race drops, risk, table pressure, Envoy."""
    out: list[Finding] = []
    groups = _groups(snap)
    explicit_snat = bool(snap.rules and snap.rules.snat)
    multi = [g for g in groups if len(g.dports) > 1]
    collided = [g for g in groups if g.rewritten and (len(g.dports) > 1 or not explicit_snat)]
    funnel_ev = _funnel_evidence(snap)

    for g in collided:
        if _is_hang(g, snap.kernel):
            out.append(_hang_finding(snap, g, funnel_ev))
        else:
            out.append(_remap_finding(g, funnel_ev, explicit_snat, snap))
    drops = _drop_counts(snap)
    funnel = bool(snap.rules and snap.rules.inbound_funnels) or bool(multi)
    if drops and funnel:
        out.append(_race_finding(snap, drops, collided, funnel_ev))
    if not out:
        risk = _risk_finding(snap)
        if risk:
            out.append(risk)
    pressure = _pressure_finding(snap, drops if not funnel else {})
    if pressure:
        out.append(pressure)
    if snap.envoy is not None:
        env = _envoy_finding(snap, groups)
        if env:
            out.append(env)
    return out


# ----------------------------------------------------------------------------- observed collisions
def _remap_finding(g: _Group, funnel_ev: list[dict[str, Any]], explicit_snat: bool,
                   snap: Snapshot) -> Finding:
    ev = [_ev_entry(e) for e in g.entries] + funnel_ev + _proxy_socket_evidence(snap, [g])
    summary = (f"five-tuple collision: {g.text()}. The kernel repaired it with an implicit source-port "
               "rewrite; the proxy sees a client port that was never used, and a SYN race on it costs ~1 s")
    if explicit_snat:
        summary += " (the namespace also has SNAT rules)"
    return Finding("tuple-collision", "warning", summary, ev, MITIGATIONS[:], {"collisions": [g.details()]})


def _hang_finding(snap: Snapshot, g: _Group, funnel_ev: list[dict[str, Any]]) -> Finding:
    ev = [_ev_entry(e) for e in g.entries]
    for name in HANG_COUNTERS:
        if name in snap.counters:
            ev.append(_ev_counter(name, snap.counters[name], snap.counter_delta(name)))
    ev += funnel_ev
    stuck = [e for e in g.rewritten if e.state == "SYN_SENT" and e.unreplied]
    sibling = [e for e in g.entries if e.state == "ESTABLISHED" and e not in stuck]
    why = _hang_reason(snap, g.first.rsport) if sibling else (
        f"kernel {snap.kernel} is older than 6.7 (no e27c3295114b): a remapped SYN is not repaired there")
    where = ("next to an ESTABLISHED sibling, whose socket answers its SYNs with challenge ACKs" if sibling
             else "(its sibling is already gone from the table; the rewrite stays until the entry times out)")
    summary = (f"collision hang (503 UF): {g.text()}; the connection to :{stuck[0].dport} is stuck in "
               f"SYN_SENT [UNREPLIED] {where}, until the client gives up. Why: {why}")
    return Finding("collision-hang", "critical", summary, ev, MITIGATIONS[:],
                   {"collisions": [g.details()], "reason": why, "sibling_present": bool(sibling)})


def _hang_reason(snap: Snapshot, capture_port: int) -> str:
    fixed = has_demux_fix(snap.kernel)
    transparent = [s for s in snap.sockets or [] if s.state == "LISTEN" and s.lport == capture_port
                   and s.transparent]
    if fixed is False:
        return (f"kernel {snap.kernel} is older than 6.7 (no e27c3295114b): TCP early demux hands the "
                "remapped SYN to the established socket")
    if transparent:
        return (f"the listener on :{capture_port} is IP_TRANSPARENT, for which the kernel skips the "
                "early-demux fix")
    if fixed is None:
        return "kernel version unknown; either a kernel older than 6.7 or a transparent listener"
    return f"kernel {snap.kernel} has the fix; a transparent listener or early demux is the likely cause"


def _drop_counts(snap: Snapshot) -> dict[str, int]:
    out = {}
    for name in ("insert_failed", "drop"):
        d = snap.stat_delta(name)
        v = d if d is not None else snap.stat_total(name)
        if v:
            out[name] = v
    return out


def _race_finding(snap: Snapshot, drops: dict[str, int], groups: list[_Group],
                  funnel_ev: list[dict[str, Any]]) -> Finding:
    """Namespace-wide counters; the collided groups are their own findings and only named here."""
    ev = [_ev_counter(n, snap.stat_total(n), snap.stat_delta(n)) for n in ("insert_failed", "drop", "found")]
    ev += funnel_ev
    rate = ", ".join(f"{k}={v}" for k, v in drops.items())
    summary = (f"collision race drops: conntrack {rate} while the rules funnel several ports into one "
               "capture port. Two SYNs from one client port to two ports raced, the loser was dropped at "
               "confirm time and retransmitted ~1 s later with a rewritten source port")
    if groups:
        summary += f" ({len(groups)} collided client(s) in the table, each its own finding)"
    return Finding("collision-race-drops", "warning", summary, ev, MITIGATIONS[:],
                   {"counters": drops, "collisions": [g.details() for g in groups]})


def _proxy_socket_evidence(snap: Snapshot, groups: list[_Group]) -> list[dict[str, Any]]:
    """The proxy's side: a socket on the capture port whose peer port the client never used."""
    out = []
    for g in groups:
        for e in g.rewritten:
            for s in snap.sockets or []:
                if s.lport == e.rsport and s.peer == e.rdst and s.pport == e.rdport:
                    out.append({"type": "socket", "text": s.text()})
    return out


# ----------------------------------------------------------------------------- predictions
def _funnel_evidence(snap: Snapshot) -> list[dict[str, Any]]:
    if not snap.rules:
        return []
    seen = set()
    out = []
    for c in snap.rules.inbound_funnels:
        if c.rule in seen:
            continue
        seen.add(c.rule)
        out.append({"type": "rule", "backend": c.backend, "text": c.rule,
                    "funnel": f"{c.ports_text()} -> :{c.to_port}"})
    return out


def _served_ports(snap: Snapshot, capture_ports: set[int], excluded: set[int]) -> set[int] | None:
    if snap.sockets is None:
        return None
    ports = {s.lport for s in snap.sockets if s.state == "LISTEN"} - capture_ports - excluded
    ports -= {p for p in ports if 15000 <= p <= 15099}  # the sidecar's own admin/metrics/health ports
    ports |= {e.dport for e in snap.scan.nat if e.rsport in capture_ports}
    return ports


def _risk_finding(snap: Snapshot) -> Finding | None:
    if not snap.rules or not snap.rules.inbound_funnels:
        return None
    funnels = snap.rules.inbound_funnels
    caps = {c.to_port for c in funnels if c.to_port is not None}
    excluded = set().union(*(c.excluded for c in funnels))
    served = _served_ports(snap, caps, excluded)
    fixed = has_demux_fix(snap.kernel)
    transparent = any(s.state == "LISTEN" and s.lport in caps and s.transparent for s in snap.sockets or [])
    if fixed is False and snap.early_demux != 0:
        sev, effect = "warning", (f"on kernel {snap.kernel} (< 6.7) with tcp_early_demux="
                                  f"{snap.early_demux} a collision hangs until the client gives up (503 UF)")
    elif transparent:
        sev, effect = "warning", "the capture listener is IP_TRANSPARENT, so a collision hangs even on >= 6.7"
    elif fixed is None:
        sev, effect = "warning", "kernel unknown: a collision hangs on < 6.7, is remapped on >= 6.7"
    else:
        sev, effect = "info", (f"on kernel {snap.kernel} a collision is silently remapped "
                               "(tcp_early_demux=0 or >= 6.7); only a SYN race costs ~1 s")
    if served is not None and len(served) < 2:
        sev = "info"
        effect += f"; the pod serves {len(served)} port(s) now, so clients cannot collide yet"
    c = funnels[0]
    summary = (f"collision risk: {c.kind.upper()} sends {c.ports_text()} to :{c.to_port}; a client that "
               f"reuses a source port for two ports of this pod collides; {effect}")
    ev = _funnel_evidence(snap)
    ev.append({"type": "kernel", "text": f"kernel {snap.kernel}, tcp_early_demux={snap.early_demux}",
               "release": snap.kernel, "tcp_early_demux": snap.early_demux})
    if served is not None:
        ev.append({"type": "ports", "text": f"ports served: {sorted(served)}", "ports": sorted(served)})
    return Finding("collision-risk", sev, summary, ev, MITIGATIONS[:],
                   {"capture_ports": sorted(caps), "served_ports": sorted(served) if served is not None else None,
                    "kernel": snap.kernel, "tcp_early_demux": snap.early_demux})


def _pressure_finding(snap: Snapshot, drops: dict[str, int]) -> Finding | None:
    count = snap.count if snap.count is not None else snap.scan.total
    ev = []
    sev = None
    parts = []
    if snap.max:
        ratio = count / snap.max
        if ratio >= 0.8:
            sev = "critical" if ratio >= 0.95 else "warning"
            parts.append(f"table at {count}/{snap.max} ({ratio:.0%}) of nf_conntrack_max")
        ev.append({"type": "table", "text": f"entries={count} max={snap.max}", "entries": count,
                   "max": snap.max})
    early = snap.stat_delta("early_drop")
    early = early if early is not None else snap.stat_total("early_drop")
    if early:
        sev = sev or "warning"
        parts.append(f"early_drop={early}")
        ev.append(_ev_counter("early_drop", snap.stat_total("early_drop"), snap.stat_delta("early_drop")))
    if drops:
        sev = sev or "warning"
        parts.append(", ".join(f"{k}={v}" for k, v in drops.items()))
        ev += [_ev_counter(k, snap.stat_total(k), snap.stat_delta(k)) for k in drops]
    if sev is None:
        return None
    return Finding("table-pressure", sev, "conntrack table pressure: " + "; ".join(parts), ev,
                   ["raise nf_conntrack_max / the hash size on the node, or shorten the timeouts",
                    "find the source of the connection churn"], {"entries": count, "max": snap.max})


# ----------------------------------------------------------------------------- envoy
def _envoy_finding(snap: Snapshot, groups: list[_Group]) -> Finding | None:
    lines = [a for a in snap.envoy or [] if a.is_503_uf]
    if not lines:
        return None
    clients: dict[tuple[str, int], tuple[_Group, CtEntry]] = {}
    for g in groups:
        for e in g.entries:
            for key in ((e.src, e.sport), (e.rdst, e.rdport)):
                clients.setdefault(key, (g, e))
    ev = []
    matched = 0
    for a in lines:
        hit = next((clients[x] for x in a.addresses() if x in clients), None)
        item: dict[str, Any] = {"type": "envoy", "line": a.lineno, "text": a.text}
        if hit:
            g, e = hit
            item["correlated"] = {"client": _addr(e.src, e.sport), "conntrack": e.line()}
            if e.start_ns and a.start:
                t = datetime.fromtimestamp(e.start_ns / 1e9, UTC)
                gap = abs((a.start - t).total_seconds())
                item["correlated"]["seconds_apart"] = round(gap, 3)
                if gap > (a.duration_ms or 0) / 1000 + 30:
                    item.pop("correlated")
                    hit = None
        if hit:
            matched += 1
        ev.append(item)
    sev = "critical" if matched else "warning"
    summary = f"{len(lines)} Envoy 503 UF line(s)"
    summary += (f", {matched} correlated with a five-tuple collision by client address" if matched
                else ", none matching a collision seen in conntrack (check upstream health too)")
    return Finding("envoy-503-uf", sev, summary, ev, MITIGATIONS[:] if matched else [],
                   {"lines": len(lines), "correlated": matched})


def exit_code(findings: list[Finding]) -> int:
    """1 if anything above info was found, else 0 (info findings are shown but are not problems)."""
    return 1 if any(f.severity != "info" for f in findings) else 0
