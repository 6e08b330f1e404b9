"""`meshnet explain` for Istio's native nftables tables (parsed by meshnet.state.parse_nft).

An nft rule is a sequence of expressions evaluated left to right: matches stop the rule when
false, statements (mark set, tproxy, redirect, verdicts) act. Only the expressions Istio's
nftables backend writes are evaluated; anything else makes the verdict uncertain.
"""

from __future__ import annotations

from meshnet.diagnose.explain.iptables import (
    TABLES,
    Explanation,
    Uncertain,
    Verdict,
    hook_of,
    iface_matches,
    in_cidr,
    in_port_list,
    owner_matches,
    pass_verdict,
    redirect_verdict,
    tproxy_verdict,
)
from meshnet.diagnose.explain.packet import Packet
from meshnet.plan.nft_model import NftRule
from meshnet.state.parse_nft import UNSUPPORTED, NftRuleset

MAX_DEPTH = 32


class _Ctx:
    def __init__(self, packet: Packet) -> None:
        self.p = packet
        self.mark = packet.mark
        self.ctmark = packet.ctmark
        self.notes: list[str] = []
        self.tproxy: Verdict | None = None  # nft tproxy only assigns the socket; the verdict comes later


def _cmp(neg: bool, result: bool) -> bool:
    return result != neg


def _match(tok: str, c: _Ctx) -> bool:
    """True/False for a match token; raises Uncertain for anything not modelled."""
    words = tok.split(" ")
    if words[0] == "meta" and words[1] in ("skuid", "skgid"):
        words = words[1:]
    neg = len(words) > 2 and words[-2] == "!="
    value = " ".join(words[2 + neg:]) if words[0] in ("meta", "ip", "ip6", "tcp", "udp", "ct") else \
        " ".join(words[1 + neg:])
    p = c.p
    head = words[0]
    if head == "meta" and words[1] == "l4proto":
        return _cmp(neg, value == p.proto)
    if head in ("ip", "ip6"):
        if (head == "ip") != (p.family == 4):
            return False  # an inet table's ip/ip6 match implies the family
        addr = p.src if words[1] == "saddr" else p.dst
        return _cmp(neg, any(in_cidr(v, addr) for v in value.strip("{} ").split(", ")))
    if head in ("tcp", "udp"):
        if head != p.proto:
            return False
        port = p.sport if words[1] == "sport" else p.dport
        return _cmp(neg, in_port_list(value, port, "-"))
    if head in ("iifname", "oifname"):
        have = p.iif if head == "iifname" else p.oif
        if head == "iifname" and p.direction == "out":
            have = None
        return _cmp(neg, any(iface_matches(v, have) for v in value.strip("{} ").split(", ")))
    if head in ("skuid", "skgid"):
        if p.direction != "out":
            return False  # no local socket on arriving packets
        return _cmp(neg, owner_matches(value, p.uid if head == "skuid" else p.gid, head[2:]))
    if head == "ct" and words[1] == "state":
        return _cmp(neg, p.state.lower() in value.split(","))
    if head == "mark" or head == "ct" and words[1] == "mark":
        have = c.mark if head == "mark" else c.ctmark
        if "&" in words:  # ambient's masked form, as parsed: `mark & 0xfff [!=] 1337`
            mask = int(words[words.index("&") + 1], 0)
            return _cmp(neg, have & mask == int(words[-1], 0))
        return _cmp(neg, have == int(value, 0))
    raise Uncertain(f"nft expression {tok!r} is not evaluated")


def _walk_table(rs: NftRuleset, table: str, c: _Ctx, ex: Explanation) -> Verdict | None:
    hook = hook_of(c.p).lower()
    base = next((ch for (t, ch), bc in rs.base_chains.items() if t == table and bc.hook == hook), None)
    if base is None or not rs.rules(table, base):
        return None
    policy = f"policy {rs.base_chains[(table, base)].policy}"
    chain = base
    hops = [f"{table} {chain}"]
    stack: list[tuple[str, int]] = []
    i = 0
    try:
        while True:
            rules = rs.rules(table, chain)
            if i >= len(rules):
                if not stack:
                    hops.append(policy)
                    return c.tproxy
                hops.append(f"end of {chain}, back to {stack[-1][0]}")
                chain, i = stack.pop()
                continue
            rule = rules[i]
            i += 1
            outcome = _run_rule(rule, c, chain)
            if outcome is None:
                continue
            hops.append(f"{chain} rule {i} ({rule.body()})")
            kind, arg = outcome
            if kind == "jump":
                if len(stack) >= MAX_DEPTH:
                    raise Uncertain("chain nesting too deep")
                stack.append((chain, i))
                chain, i = arg, 0
            elif kind == "goto":
                chain, i = arg, 0
            elif kind == "return":
                if not stack:
                    hops.append(policy)
                    return c.tproxy
                chain, i = stack.pop()
            elif kind == "accept":
                hops.append("accept")
                return c.tproxy
            elif kind == "drop":
                hops.append("drop")
                return Verdict("drop", f"drop in {table} {chain}")
            elif kind == "continue":
                continue
            elif kind == "verdict":
                assert isinstance(arg, Verdict)
                hops.append(arg.text.split(" (")[0])
                return arg
    except Uncertain as exc:
        hops.append(f"{chain} rule {i}: UNCERTAIN ({exc})")
        return Verdict("uncertain", f"uncertain: {exc}; the path after {table} {chain} rule {i} is not known")
    finally:
        ex.paths.append(" -> ".join(hops))


def _run_rule(rule: NftRule, c: _Ctx, chain: str) -> tuple[str, object] | None:
    """Evaluate one rule; None when a match fails (statements before it have already acted)."""
    for tok in (*rule.matches, *rule.action):
        if tok.startswith(UNSUPPORTED):
            raise Uncertain(f"unsupported nft expression {tok.removeprefix(UNSUPPORTED)}")
        words = tok.split(" ")
        if tok in ("accept", "drop", "return"):
            return tok, None
        if words[0] in ("jump", "goto"):
            return words[0], words[1]
        if words[0] == "redirect":
            return "verdict", redirect_verdict(chain, int(words[-1].lstrip(":")), c.p)
        if words[0] == "tproxy":
            if (words[1] == "ip") != (c.p.family == 4):
                return None  # `tproxy ip` in an inet table only applies to IPv4 packets
            c.tproxy = tproxy_verdict(chain, int(words[-1].rsplit(":", 1)[1]), f"{c.mark:#x}", c.p)
        elif tok.startswith("meta mark set "):
            c.mark = c.ctmark if tok.endswith("ct mark") else int(words[-1], 0)
            if c.tproxy is not None:
                c.tproxy = tproxy_verdict(chain, c.tproxy.port or 0, f"{c.mark:#x}", c.p)
        elif tok == "ct mark set mark":
            c.ctmark = c.mark
        elif tok.startswith("ct mark set ct mark & "):  # ambient: ct mark = (ct mark & M) | B
            mask, bits = int(words[6], 0), int(words[8], 0)
            c.ctmark = (c.ctmark & mask) | bits
        elif tok.startswith("ct zone set "):
            c.notes.append(f"conntrack zone {words[-1]} is set for this connection")
        elif not _match(tok, c):
            return None
    return "continue", None


def explain_nft(rs: NftRuleset, packet: Packet) -> Explanation:
    from meshnet.apply.backends import NFTABLES

    ex = Explanation(NFTABLES, packet)
    c = _Ctx(packet)
    for table in TABLES:
        if table == "nat" and packet.state != "NEW":
            ex.notes.append("nat is skipped: only a connection's first packet (NEW) sees it")
            continue
        mark_before = c.mark
        verdict = _walk_table(rs, table, c, ex)
        ex.notes += c.notes
        c.notes = []
        if verdict is not None:
            ex.verdict = verdict
            return ex
        if table == "mangle" and packet.direction == "out" and c.mark != mark_before:
            ex.notes.append(f"mangle output changed the mark to {c.mark:#x}: the kernel re-routes the packet")
    ex.verdict = pass_verdict(packet)
    return ex
