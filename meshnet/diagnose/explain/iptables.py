"""Follow one packet through a namespace's live iptables rules and say where it goes.

Netfilter's order for the hooks Istio uses: a locally generated packet passes raw, mangle, nat
OUTPUT; an arriving one raw, mangle, nat PREROUTING. nat only sees a connection's first packet.
Each rule's matches are evaluated as three-valued logic: a match this module does not model
(an opaque part of a foreign rule, an unknown uid) makes the walk stop with an *uncertain* verdict rather than a
guess. Native nftables rules are walked by `explain_nft` with the same result types.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
from typing import TYPE_CHECKING

from meshnet.diagnose.explain.packet import Packet, owner_defaults
from meshnet.lite.records import dataclass, field, replace
from meshnet.plan.model import COMMENT, OPAQUE, Match, Rule, RuleSet

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.state.live import LiveState

TABLES = ("raw", "mangle", "nat")
# Non-terminating targets that only log, count, queue a copy or rewrite header fields netfilter's
# path here does not depend on: the walk goes on after them whatever their options.
PATH_NEUTRAL = frozenset({"LOG", "NFLOG", "ULOG", "AUDIT", "TRACE", "TCPMSS", "TCPOPTSTRIP", "CHECKSUM",
                          "CLASSIFY", "DSCP", "TOS", "ECN", "TTL", "HL", "IDLETIMER", "LED", "SECMARK",
                          "CONNSECMARK", "SET", "RATEEST"})
MAX_DEPTH = 32  # chains calling chains; deeper means a loop the kernel would have refused


@dataclass
class Verdict:
    kind: str  # redirect | tproxy | drop | pass | uncertain
    text: str
    port: int | None = None
    capture: str | None = None  # outbound | inbound | dns (for redirect/tproxy)

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "text": self.text, "port": self.port, "capture": self.capture}


@dataclass
class Explanation:
    backend: str
    packet: Packet
    paths: list[str] = field(default_factory=list)  # one line per table walked
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"[{self.backend}] {self.packet.describe()}", *(f"  {p}" for p in self.paths)]
        out += [f"  note: {n}" for n in self.notes]
        if self.verdict:
            out.append(f"  verdict: {self.verdict.text}")
        return out

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "packet": self.packet.to_dict(), "paths": self.paths,
                "verdict": self.verdict.to_dict() if self.verdict else None, "notes": self.notes}


class Uncertain(Exception):
    """A match or target this module does not evaluate: the verdict cannot be known."""


# ----------------------------------------------------------------- shared helpers (also used for nft)
def hook_of(packet: Packet) -> str:
    return "OUTPUT" if packet.direction == "out" else "PREROUTING"


def capture_kind(chain: str, port: int, packet: Packet) -> str:
    """Name a capture by the chain that did it (Istio's chain names), else by direction."""
    low = chain.lower().replace("_", "-")
    if "dns" in low or port == 15053:
        return "dns"
    if low.endswith("in-redirect") or "tproxy" in low or "inbound" in low:
        return "inbound"
    if low.endswith("redirect"):
        return "outbound"
    return "outbound" if packet.direction == "out" else "inbound"


CAPTURE_TEXT = {"outbound": "outbound capture: the sidecar's outbound listener",
                "inbound": "inbound capture: the sidecar's inbound listener",
                "dns": "DNS capture: the sidecar's DNS proxy"}


def redirect_verdict(chain: str, port: int, packet: Packet) -> Verdict:
    kind = capture_kind(chain, port, packet)
    return Verdict("redirect", f"REDIRECT to :{port} ({CAPTURE_TEXT[kind]})", port, kind)


def tproxy_verdict(chain: str, port: int, mark: str, packet: Packet) -> Verdict:
    kind = capture_kind(chain, port, packet)
    return Verdict("tproxy", f"TPROXY to :{port} mark {mark} ({CAPTURE_TEXT[kind]}; delivered to the transparent "
                             "listener through the fwmark policy route)", port, kind)


def pass_verdict(packet: Packet) -> Verdict:
    dst = f"[{packet.dst}]:{packet.dport}" if packet.family == 6 else f"{packet.dst}:{packet.dport}"
    if packet.direction == "in":
        return Verdict("pass", f"not intercepted: delivered to {dst} (the application, not the proxy)")
    if packet.oif == "lo":
        return Verdict("pass", f"not intercepted: delivered locally to {dst} over lo")
    return Verdict("pass", f"not intercepted: leaves via {packet.oif or '(unknown interface)'} to {dst}")


def owner_matches(value: str, have: int | None, kind: str) -> bool:
    if have is None:
        raise Uncertain(f"rule matches the socket {kind}, but the packet has none given")
    lo, sep, hi = value.partition("-")
    try:
        ids = [int(x) if x.isdigit() else _name_id(x, kind) for x in ((lo, hi) if sep else (lo,))]
    except KeyError:
        raise Uncertain(f"unknown {kind} name {value!r}") from None
    return ids[0] <= have <= ids[-1]


def _name_id(name: str, kind: str) -> int:
    return pwd.getpwnam(name).pw_uid if kind == "uid" else grp.getgrnam(name).gr_gid


def in_port_list(value: str, port: int, sep_range: str) -> bool:
    """'80', '80:90' (iptables) or '80-90' (nft), comma separated lists too."""
    for item in value.replace(" ", "").strip("{}").split(","):
        lo, sep, hi = item.partition(sep_range)
        if sep and int(lo) <= port <= int(hi) or not sep and int(lo) == port:
            return True
    return False


def in_cidr(value: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool | None:
    """None when the address family differs (the match does not apply)."""
    net = ipaddress.ip_network(value, strict=False)
    if net.version != addr.version:
        return None
    return addr in net


def mark_matches(value: str, have: int) -> bool:
    val, sep, mask = value.partition("/")
    m = int(mask, 0) if sep else 0xFFFFFFFF
    return have & m == int(val, 0) & m


def iface_matches(pattern: str, have: str | None) -> bool:
    if have is None:
        raise Uncertain("the interface is unknown (give iface=/oif=)")
    pattern = pattern.strip('"')
    if pattern.endswith(("+", "*")):
        return have.startswith(pattern[:-1])
    return have == pattern


# ----------------------------------------------------------------- iptables walker
@dataclass
class _PacketState:
    mark: int
    ctmark: int


def _match(m: Match, p: Packet, chain_hook: str) -> bool:
    if m.kind == OPAQUE:
        raise Uncertain(f"match {m.value!r} is not evaluated")
    if m.kind in (COMMENT, "module"):  # a comment, a bare `-m tcp`: never change what matches
        return True
    result: bool
    if m.kind == "proto":
        result = m.value in (p.proto, "all", {"tcp": "6", "udp": "17"}[p.proto])
    elif m.kind in ("src", "dst"):
        r = in_cidr(m.value, p.src if m.kind == "src" else p.dst)
        result = bool(r)
    elif m.kind == "in":
        result = iface_matches(m.value, p.iif if chain_hook == "PREROUTING" else None)
    elif m.kind == "out":
        result = iface_matches(m.value, p.oif)
    elif m.kind in ("dport", "sport"):
        result = in_port_list(m.value, p.dport if m.kind == "dport" else p.sport, ":")
    elif m.kind == "dports":
        result = in_port_list(m.value, p.dport, ":")
    elif m.kind in ("uid", "gid"):
        if chain_hook != "OUTPUT":
            return False  # no local socket on arriving packets: the owner match never matches
        result = owner_matches(m.value, p.uid if m.kind == "uid" else p.gid, m.kind)
    elif m.kind == "ctstate":
        result = p.state in {s.strip().upper() for s in m.value.split(",")}
    elif m.kind in ("mark", "connmark"):
        result = mark_matches(m.value, p.mark if m.kind == "mark" else p.ctmark)
    else:
        raise Uncertain(f"match {m.kind} is not evaluated")
    return result != m.negated


def _rule_matches(rule: Rule, p: Packet, hook: str, cur: _PacketState) -> bool:
    """Three-valued: a known part that does not match decides (False) before an unknown one
    (opaque, or a socket owner the packet lacks) makes the rule Uncertain."""
    live = replace(p, mark=cur.mark, ctmark=cur.ctmark)
    unknown: Uncertain | None = None
    for m in rule.matches:
        try:
            if not _match(m, live, hook):
                return False
        except Uncertain as exc:
            unknown = unknown or exc
    if unknown is not None:
        raise unknown
    return True


def _walk_table(rs: RuleSet, table: str, p: Packet, cur: _PacketState, ex: Explanation) -> Verdict | None:
    """Walk one table's builtin chain. Returns a final verdict, or None to continue to the next table."""
    hook = hook_of(p)
    if table in rs.unreadable:
        ex.paths.append(f"{table} {hook} -> UNCERTAIN (iptables-nft-save cannot show this table)")
        return Verdict("uncertain", f"uncertain: the {table} table holds nft rules iptables-nft-save cannot show "
                                    "(use nft list ruleset)")
    t = rs.tables.get(table)
    if t is None or hook not in t.chains:
        return None
    if not any(c.rules for c in t.chains.values()):
        return None
    hops = [f"{table} {hook}"]
    stack: list[tuple[str, int]] = []
    chain, i = hook, 0
    try:
        while True:
            rules = rs.rules(table, chain)
            if i >= len(rules):
                if not stack:
                    policy = t.chains[hook].policy or "ACCEPT"
                    hops.append(f"policy {policy}")
                    if policy == "DROP":
                        return Verdict("drop", f"dropped by the {table} {hook} policy")
                    return None
                hops.append(f"end of {chain}, back to {stack[-1][0]}")
                chain, i = stack.pop()
                continue
            rule = rules[i]
            i += 1
            if not _rule_matches(rule, p, hook, cur):
                continue
            hops.append(f"{chain} rule {i} ({rule})")
            target = rule.target
            name = target.name
            if target.is_jump_to_chain:
                if name not in t.chains:
                    raise Uncertain(f"target {name} is not evaluated")
                if target.goto:  # -g: the new chain's end or RETURN goes back to our caller
                    chain, i = name, 0
                    continue
                if len(stack) >= MAX_DEPTH:
                    raise Uncertain("chain nesting too deep")
                stack.append((chain, i))
                chain, i = name, 0
            elif target.opaque and name not in PATH_NEUTRAL and name != "REJECT":
                raise Uncertain(f"target {name} {target.opaque} is not evaluated")
            elif name in PATH_NEUTRAL:
                hops.append(f"{name} (does not change where the packet goes)")
                continue
            elif name == "RETURN":
                if not stack:
                    policy = t.chains[hook].policy or "ACCEPT"
                    hops.append(f"policy {policy}")
                    return None if policy != "DROP" else Verdict("drop", f"dropped by the {table} {hook} policy")
                chain, i = stack.pop()
            elif name == "ACCEPT":
                hops.append("ACCEPT")
                return None
            elif name in ("DROP", "REJECT"):  # REJECT's --reject-with does not change the verdict
                hops.append(name)
                return Verdict("drop", f"{name} in {table} {chain}")
            elif name == "REDIRECT":
                port = int(_arg(target.args, "--to-ports").split("-")[0])
                hops.append(f"REDIRECT to :{port}")
                return redirect_verdict(chain, port, p)
            elif name == "TPROXY":
                port = int(_arg(target.args, "--on-port"))
                mark = _arg(target.args, "--tproxy-mark")
                hops.append(f"TPROXY to :{port} mark {mark}")
                return tproxy_verdict(chain, port, mark, p)
            elif name == "MARK":
                _set_mark(cur, target.args)
                hops.append(f"MARK set {cur.mark:#x}")
            elif name == "CONNMARK":
                if "--save-mark" in target.args:
                    cur.ctmark = cur.mark
                elif "--restore-mark" in target.args:
                    cur.mark = cur.ctmark
                else:
                    raise Uncertain(f"CONNMARK {' '.join(target.args)} is not evaluated")
                hops.append(f"CONNMARK {' '.join(target.args)} (mark {cur.mark:#x}, ctmark {cur.ctmark:#x})")
            elif name == "CT":
                hops.append(f"CT zone set {_arg(target.args, '--zone')}")
                ex.notes.append(f"conntrack zone {_arg(target.args, '--zone')} is set for this connection")
            elif name == "":
                continue
            else:
                raise Uncertain(f"target {name} is not evaluated")
    except Uncertain as exc:
        hops.append(f"{chain} rule {i}: UNCERTAIN ({exc})")
        return Verdict("uncertain", f"uncertain: {exc}; the path after {table} {chain} rule {i} is not known")
    finally:
        ex.paths.append(" -> ".join(hops))


def _arg(args: tuple[str, ...], flag: str) -> str:
    if flag not in args:
        raise Uncertain(f"target without {flag}")
    return args[args.index(flag) + 1]


def _set_mark(cur: _PacketState, args: tuple[str, ...]) -> None:
    if "--set-mark" in args:
        cur.mark = int(_arg(args, "--set-mark").split("/")[0], 0)
        return
    val, _, mask = _arg(args, "--set-xmark").partition("/")
    m = int(mask, 0) if mask else 0xFFFFFFFF
    cur.mark = (cur.mark & ~m & 0xFFFFFFFF) ^ int(val, 0)


def explain_ruleset(rs: RuleSet, packet: Packet, backend: str) -> Explanation:
    ex = Explanation(backend, packet)
    cur = _PacketState(packet.mark, packet.ctmark)
    for table in TABLES:
        if table == "nat" and packet.state != "NEW":
            ex.notes.append(f"nat {hook_of(packet)} is skipped: only a connection's first packet (NEW) sees it; "
                            "later packets follow the NAT binding made for that first packet")
            continue
        mark_before = cur.mark
        verdict = _walk_table(rs, table, packet, cur, ex)
        if verdict is not None:
            ex.verdict = verdict
            return ex
        if table == "mangle" and packet.direction == "out" and cur.mark != mark_before:
            ex.notes.append(f"mangle OUTPUT changed the mark to {cur.mark:#x}: the kernel re-routes the packet, "
                            "so a fwmark policy rule may change its output interface")
    ex.verdict = pass_verdict(packet)
    if packet.direction == "out" and packet.oif == "lo":
        ex.notes.append("the packet re-enters the namespace on lo: explain it again with `in iface=lo`")
    return ex


# ----------------------------------------------------------------- live namespace
def resolve_oif(netns: Netns, packet: Packet) -> tuple[Packet, str | None]:
    """Fill the output interface the way the kernel routes: loopback and own addresses go out lo."""
    if packet.direction != "out" or packet.oif is not None:
        return packet, None
    from meshnet.state.addresses import local_addresses

    if packet.dst.is_loopback or packet.dst in local_addresses(netns):
        return replace(packet, oif="lo"), f"{packet.dst} is local: the packet goes out lo"
    argv = ["ip", "-6" if packet.family == 6 else "-4", "-o", "route", "get", str(packet.dst)]
    cp = netns.run(argv, check=False)
    words = cp.stdout.split()
    if cp.returncode != 0 or "dev" not in words:
        reason = (cp.stderr.strip() or "no route").splitlines()[-1]
        return packet, f"no route to {packet.dst} in the namespace ({reason}): give oif= to explain anyway"
    oif = words[words.index("dev") + 1]
    return replace(packet, oif=oif), f"route to {packet.dst} goes out {oif}"


def explain_live(netns: Netns, packet: Packet, state: LiveState | None = None) -> list[Explanation]:
    """One explanation per backend that holds Istio rules (all of them run in the kernel)."""
    from meshnet.apply.backends import NFTABLES
    from meshnet.state.live import read_live

    state = state or read_live(netns)
    packet, route_note = resolve_oif(netns, packet)
    packet, owner_note = owner_defaults(packet)
    backends = state.istio_backends()
    # A table iptables-nft-save could not show may hold Istio's rules: walk it (uncertain), never "no rules".
    backends += [b for b in state.xtables if b not in backends and state.ruleset(b, packet.family).unreadable]
    results: list[Explanation] = []
    for backend in backends:
        if backend == NFTABLES:
            from meshnet.diagnose.explain.nft import explain_nft

            assert state.nft is not None
            ex = explain_nft(state.nft, packet)
        else:
            ex = explain_ruleset(state.ruleset(backend, packet.family), packet, backend)  # type: ignore[arg-type]
        ex.notes[:0] = [n for n in (route_note, owner_note) if n]
        if packet.direction == "out" and packet.uid is None and packet.gid is None:
            ex.notes.insert(0, "no uid=/gid= given: owner matches make the verdict uncertain")
        results.append(ex)
    if len(backends) > 1:
        for ex in results:
            ex.notes.append(f"Istio rules exist in {len(backends)} backends ({', '.join(backends)}): the kernel runs "
                            "all of them, so the packet meets every one of these paths")
    if not results:
        ex = Explanation("none", packet, notes=[*state.errors, *([route_note] if route_note else [])])
        if state.errors:
            ex.verdict = Verdict("uncertain", "uncertain: the rules could not all be read (see notes)")
        else:
            ex.verdict = pass_verdict(packet)
            ex.verdict.text += " (no Istio interception rules in any backend)"
        results.append(ex)
    return results

