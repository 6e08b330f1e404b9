"""`meshnet explain` for Istio's native nftables tables (parsed by meshnet.state.parse_nft).

An nft rule is a sequence of expressions evaluated left to right: matches stop the rule when
false, statements (mark set, tproxy, redirect, verdicts) act. Only the expressions Istio's
nftables backend writes are evaluated; anything else makes the verdict uncertain. The walk over
tables and chains is meshnet.diagnose.explain.walker's, shared with iptables; this is the nft `RuleFamily`.
"""

from __future__ import annotations

from meshnet.diagnose.explain.packet import Packet
from meshnet.diagnose.explain.result import Explanation, Verdict, redirect_verdict, tproxy_verdict
from meshnet.diagnose.explain.values import Uncertain, iface_matches, in_cidr, in_port_list, owner_matches
from meshnet.diagnose.explain.walker import Outcome, PathState, Step, Walker
from meshnet.plan.nft_model import NftRule
from meshnet.state.parse_nft import UNSUPPORTED, NftRuleset


def _cmp(neg: bool, result: bool) -> bool:
    return result != neg


def _match(tok: str, c: PathState) -> bool:
    """True/False for a match token; raises Uncertain for anything not modelled."""
    words = tok.split(" ")
    if words[0] == "meta" and words[1] in ("skuid", "skgid"):
        words = words[1:]
    neg = len(words) > 2 and words[-2] == "!="
    value = " ".join(words[2 + neg:]) if words[0] in ("meta", "ip", "ip6", "tcp", "udp", "ct") else \
        " ".join(words[1 + neg:])
    p = c.packet
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
        bits = c.mark if head == "mark" else c.ctmark
        if "&" in words:  # ambient's masked form, as parsed: `mark & 0xfff [!=] 1337`
            mask = int(words[words.index("&") + 1], 0)
            return _cmp(neg, bits & mask == int(words[-1], 0))
        return _cmp(neg, bits == int(value, 0))
    raise Uncertain(f"nft expression {tok!r} is not evaluated")


class NftFamily:
    """Istio's inet tables as the walker sees them: a hook enters the base chain declared on it."""

    def __init__(self, rs: NftRuleset) -> None:
        from meshnet.apply.backends import NFTABLES

        self.rs, self.backend = rs, NFTABLES

    def nat_skip_note(self, packet: Packet) -> str:
        return "nat is skipped: only a connection's first packet (NEW) sees it"

    def entry(self, table: str, hook: str, ex: Explanation) -> str | Verdict | None:
        base = next((ch for (t, ch), bc in self.rs.base_chains.items() if t == table and bc.hook == hook.lower()),
                    None)
        if base is None or not self.rs.rules(table, base):
            return None
        return base

    def rules(self, table: str, chain: str) -> list[NftRule]:
        return self.rs.rules(table, chain)

    def describe(self, rule: NftRule) -> str:
        return rule.body()

    def leave(self, table: str, base: str, state: PathState) -> tuple[str, Verdict | None]:
        # nft policies are not evaluated (Istio's base chains accept): a tproxy decided earlier stands.
        return f"policy {self.rs.base_chains[(table, base)].policy}", state.tproxy

    def accepted(self, state: PathState) -> Verdict | None:
        return state.tproxy

    def mark_note(self, mark: int) -> str:
        return f"mangle output changed the mark to {mark:#x}: the kernel re-routes the packet"

    def finish(self, ex: Explanation) -> None:
        return None

    def run(self, rule: NftRule, state: PathState, table: str, chain: str, hook: str) -> Step:
        """Expressions left to right: a false match ends the rule (statements before it have acted)."""
        c = state
        for tok in (*rule.matches, *rule.action):
            if tok.startswith(UNSUPPORTED):
                raise Uncertain(f"unsupported nft expression {tok.removeprefix(UNSUPPORTED)}")
            words = tok.split(" ")
            if tok == "accept":
                return Step(Outcome.ACCEPT, hop="accept")
            if tok == "drop":
                return Step(Outcome.DROP, hop="drop")
            if tok == "return":
                return Step(Outcome.RETURN)
            if words[0] == "jump":
                return Step(Outcome.JUMP, chain=words[1])
            if words[0] == "goto":
                return Step(Outcome.GOTO, chain=words[1])
            if words[0] == "redirect":
                v = redirect_verdict(chain, int(words[-1].lstrip(":")), c.packet)
                return Step(Outcome.VERDICT, verdict=v, hop=v.text.split(" (")[0])
            if words[0] == "tproxy":
                if (words[1] == "ip") != (c.packet.family == 4):
                    return Step(Outcome.NO_MATCH)  # `tproxy ip` in an inet table only applies to IPv4 packets
                c.tproxy = tproxy_verdict(chain, int(words[-1].rsplit(":", 1)[1]), f"{c.mark:#x}", c.packet)
            elif tok.startswith("meta mark set "):
                c.mark = c.ctmark if tok.endswith("ct mark") else int(words[-1], 0)
                if c.tproxy is not None:
                    c.tproxy = tproxy_verdict(chain, c.tproxy.port or 0, f"{c.mark:#x}", c.packet)
            elif tok == "ct mark set mark":
                c.ctmark = c.mark
            elif tok.startswith("ct mark set ct mark & "):  # ambient: ct mark = (ct mark & M) | B
                mask, bits = int(words[6], 0), int(words[8], 0)
                c.ctmark = (c.ctmark & mask) | bits
            elif tok.startswith("ct zone set "):
                c.notes.append(f"conntrack zone {words[-1]} is set for this connection")
            elif not _match(tok, c):
                return Step(Outcome.NO_MATCH)
        return Step(Outcome.CONTINUE)


def explain_nft(rs: NftRuleset, packet: Packet) -> Explanation:
    return Walker(NftFamily(rs)).explain(packet)
