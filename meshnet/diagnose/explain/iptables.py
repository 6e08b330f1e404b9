"""Explain for iptables rules (the RuleSet of iptables-save, either backend): the iptables `RuleFamily`.

The walk itself is meshnet.diagnose.explain.walker's, shared with nftables; this module says
what is iptables about it: a hook enters the builtin chain of the same name, each match is
evaluated by its kind's entry in meshnet.plan.match_kinds (three-valued: an opaque part of a
foreign rule or an unknown uid makes the verdict uncertain), and the targets Istio writes act
here. `explain_live` explains a live namespace's every backend, nftables included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshnet.diagnose.explain.packet import Packet, owner_defaults
from meshnet.diagnose.explain.result import (
    Explanation,
    Verdict,
    hook_of,
    pass_verdict,
    redirect_verdict,
    tproxy_verdict,
    uncertain_verdict,
)
from meshnet.diagnose.explain.values import Uncertain
from meshnet.diagnose.explain.walker import Outcome, PathState, Step, Walker
from meshnet.lite.records import replace
from meshnet.plan.match_kinds import KINDS
from meshnet.plan.model import Rule, RuleSet

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.state.live import LiveState

__all__ = ["Explanation", "Verdict", "explain_live", "explain_ruleset", "resolve_oif"]

# Non-terminating targets that only log, count, queue a copy or rewrite header fields netfilter's
# path here does not depend on: the walk goes on after them whatever their options.
PATH_NEUTRAL = frozenset({"LOG", "NFLOG", "ULOG", "AUDIT", "TRACE", "TCPMSS", "TCPOPTSTRIP", "CHECKSUM",
                          "CLASSIFY", "DSCP", "TOS", "ECN", "TTL", "HL", "IDLETIMER", "LED", "SECMARK",
                          "CONNSECMARK", "SET", "RATEEST"})


def _rule_matches(rule: Rule, p: Packet, hook: str) -> bool:
    """Three-valued: a known part that does not match decides (False) before an unknown one
    (opaque, or a socket owner the packet lacks) makes the rule Uncertain."""
    unknown: Uncertain | None = None
    for m in rule.matches:
        try:
            if not KINDS[m.kind].matches(m.value, m.negated, p, hook):
                return False
        except Uncertain as exc:
            unknown = unknown or exc
    if unknown is not None:
        raise unknown
    return True


class IptablesFamily:
    """One family's RuleSet as the walker sees it."""

    def __init__(self, rs: RuleSet, backend: str) -> None:
        self.rs, self.backend = rs, backend

    def nat_skip_note(self, packet: Packet) -> str:
        return (f"nat {hook_of(packet)} is skipped: only a connection's first packet (NEW) sees it; "
                "later packets follow the NAT binding made for that first packet")

    def entry(self, table: str, hook: str, ex: Explanation) -> str | Verdict | None:
        if table in self.rs.unreadable:
            ex.paths.append(f"{table} {hook} -> UNCERTAIN (iptables-nft-save cannot show this table)")
            return uncertain_verdict(f"uncertain: the {table} table holds nft rules iptables-nft-save cannot "
                                     "show (use nft list ruleset)")
        t = self.rs.tables.get(table)
        if t is None or hook not in t.chains or not any(c.rules for c in t.chains.values()):
            return None
        return hook

    def rules(self, table: str, chain: str) -> list[Rule]:
        return self.rs.rules(table, chain)

    def describe(self, rule: Rule) -> str:
        return str(rule)

    def leave(self, table: str, base: str, state: PathState) -> tuple[str, Verdict | None]:
        policy = self.rs.tables[table].chains[base].policy or "ACCEPT"
        drop = Verdict("drop", f"dropped by the {table} {base} policy") if policy == "DROP" else None
        return f"policy {policy}", drop

    def accepted(self, state: PathState) -> Verdict | None:
        return None

    def mark_note(self, mark: int) -> str:
        return (f"mangle OUTPUT changed the mark to {mark:#x}: the kernel re-routes the packet, "
                "so a fwmark policy rule may change its output interface")

    def finish(self, ex: Explanation) -> None:
        if ex.packet.direction == "out" and ex.packet.oif == "lo":
            ex.notes.append("the packet re-enters the namespace on lo: explain it again with `in iface=lo`")

    def run(self, rule: Rule, state: PathState, table: str, chain: str, hook: str) -> Step:
        live = replace(state.packet, mark=state.mark, ctmark=state.ctmark)
        if not _rule_matches(rule, live, hook):
            return Step(Outcome.NO_MATCH)
        try:
            return self._target(rule, state, table, chain)
        except Uncertain as exc:  # after the rule's path line: the rule matched, its target is unknown
            return Step(Outcome.UNCERTAIN, hop=str(exc))

    def _target(self, rule: Rule, state: PathState, table: str, chain: str) -> Step:
        target = rule.target.canonical()  # the kernel's spelling: a plan's `--to-port` reads as `--to-ports`
        name = target.name
        p = state.packet
        if target.is_jump_to_chain:
            if name not in self.rs.tables[table].chains:
                raise Uncertain(f"target {name} is not evaluated")
            return Step(Outcome.GOTO if target.goto else Outcome.JUMP, chain=name)
        if target.opaque and name not in PATH_NEUTRAL and name != "REJECT":
            raise Uncertain(f"target {name} {target.opaque} is not evaluated")
        if name in PATH_NEUTRAL:
            return Step(Outcome.CONTINUE, hop=f"{name} (does not change where the packet goes)")
        if name == "RETURN":
            return Step(Outcome.RETURN)
        if name == "ACCEPT":
            return Step(Outcome.ACCEPT, hop="ACCEPT")
        if name in ("DROP", "REJECT"):  # REJECT's --reject-with does not change the verdict
            return Step(Outcome.DROP, hop=name)
        if name == "REDIRECT":
            port = int(_arg(target.args, "--to-ports").split("-")[0])
            return Step(Outcome.VERDICT, verdict=redirect_verdict(chain, port, p), hop=f"REDIRECT to :{port}")
        if name == "TPROXY":
            port = int(_arg(target.args, "--on-port"))
            mark = _arg(target.args, "--tproxy-mark")
            return Step(Outcome.VERDICT, verdict=tproxy_verdict(chain, port, mark, p),
                        hop=f"TPROXY to :{port} mark {mark}")
        if name == "MARK":
            _set_mark(state, target.args)
            return Step(Outcome.CONTINUE, hop=f"MARK set {state.mark:#x}")
        if name == "CONNMARK":
            if "--save-mark" in target.args:
                state.ctmark = state.mark
            elif "--restore-mark" in target.args:
                state.mark = state.ctmark
            else:
                raise Uncertain(f"CONNMARK {' '.join(target.args)} is not evaluated")
            return Step(Outcome.CONTINUE, hop=f"CONNMARK {' '.join(target.args)} "
                                              f"(mark {state.mark:#x}, ctmark {state.ctmark:#x})")
        if name == "CT":
            zone = _arg(target.args, "--zone")
            state.notes.append(f"conntrack zone {zone} is set for this connection")
            return Step(Outcome.CONTINUE, hop=f"CT zone set {zone}")
        if name == "":
            return Step(Outcome.CONTINUE)
        raise Uncertain(f"target {name} is not evaluated")


def _arg(args: tuple[str, ...], flag: str) -> str:
    if flag not in args:
        raise Uncertain(f"target without {flag}")
    return args[args.index(flag) + 1]


def _set_mark(state: PathState, args: tuple[str, ...]) -> None:
    if "--set-mark" in args:
        state.mark = int(_arg(args, "--set-mark").split("/")[0], 0)
        return
    val, _, mask = _arg(args, "--set-xmark").partition("/")
    m = int(mask, 0) if mask else 0xFFFFFFFF
    state.mark = (state.mark & ~m & 0xFFFFFFFF) ^ int(val, 0)


def explain_ruleset(rs: RuleSet, packet: Packet, backend: str) -> Explanation:
    return Walker(IptablesFamily(rs, backend)).explain(packet)


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
            ex = explain_ruleset(state.ruleset(backend, packet.family), packet, backend)
        ex.notes[:0] = [n for n in (route_note, owner_note) if n]
        if packet.direction == "out" and packet.uid is None and packet.gid is None:
            ex.notes.insert(0, "no uid=/gid= given: owner matches make the verdict uncertain")
        results.append(ex)
    from meshnet.ambient.wording import is_ambient, ztunnel_words

    if is_ambient(state):  # an ambient pod: its traffic goes to ztunnel, not to a sidecar
        for ex in results:
            if ex.verdict is not None:
                ex.verdict.text = ztunnel_words(ex.verdict.text)
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

