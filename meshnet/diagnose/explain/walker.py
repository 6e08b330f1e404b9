"""The one walk `meshnet explain` does, for both rule families (iptables' model and Istio's nftables).

Netfilter's order for the hooks Istio uses: a locally generated packet passes raw, mangle, nat
OUTPUT; an arriving one raw, mangle, nat PREROUTING. nat only sees a connection's first packet.
In each table the walker enters the hook's base chain, runs its rules in order, follows jumps
(a call stack), gotos and returns, and stops at the first final verdict. What differs between
the families sits behind `RuleFamily`: which chain a hook enters, what a rule does to the packet
(`run` -> a typed `Step`), the chain policy and the wording of the path. Every unknown makes the
walk stop with an *uncertain* verdict rather than a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Generic, Protocol, TypeVar

from meshnet.diagnose.explain.packet import Packet
from meshnet.diagnose.explain.result import Explanation, Verdict, hook_of, pass_verdict, uncertain_verdict
from meshnet.diagnose.explain.values import Uncertain
from meshnet.lite.records import dataclass, field

TABLES = ("raw", "mangle", "nat")
MAX_DEPTH = 32  # chains calling chains; deeper means a loop the kernel would have refused


class Outcome(Enum):
    """What one rule did, as far as where the packet goes."""

    NO_MATCH = "no match"  # a match failed: the next rule
    CONTINUE = "continue"  # matched, acted (or only counted): the next rule
    JUMP = "jump"  # into `Step.chain`, coming back after it
    GOTO = "goto"  # into `Step.chain`; its end returns to our caller
    RETURN = "return"
    ACCEPT = "accept"  # leaves this table
    DROP = "drop"
    VERDICT = "verdict"  # a final capture (`Step.verdict`): REDIRECT, TPROXY
    UNCERTAIN = "uncertain"  # matched, but its target is not evaluated (`Step.hop` says why)


@dataclass
class Step:
    outcome: Outcome
    chain: str = ""  # JUMP / GOTO
    verdict: Verdict | None = None  # VERDICT
    hop: str = ""  # path text after the rule's own: the target's effect (DROP: its name); UNCERTAIN: why


@dataclass
class PathState:
    """What the walk carries from rule to rule and table to table."""

    packet: Packet
    mark: int
    ctmark: int
    notes: list[str] = field(default_factory=list)  # moved to the explanation after each table
    tproxy: Verdict | None = None  # nft: tproxy assigns the socket; the verdict comes when the table accepts


RuleT = TypeVar("RuleT")


class RuleFamily(Protocol[RuleT]):
    backend: str

    def nat_skip_note(self, packet: Packet) -> str:
        """Why nat is not walked for a packet that is not a connection's first."""

    def entry(self, table: str, hook: str, ex: Explanation) -> str | Verdict | None:
        """The base chain `hook` enters in `table`; None when the table does not take part; a Verdict
        when the table cannot be read (the family has added its path line)."""

    def rules(self, table: str, chain: str) -> Sequence[RuleT]: ...

    def run(self, rule: RuleT, state: PathState, table: str, chain: str, hook: str) -> Step:
        """Evaluate one rule; raises Uncertain when a match cannot be known."""

    def describe(self, rule: RuleT) -> str: ...

    def leave(self, table: str, base: str, state: PathState) -> tuple[str, Verdict | None]:
        """Falling off (or RETURN from) the base chain: the policy's path text and verdict."""

    def accepted(self, state: PathState) -> Verdict | None:
        """The verdict when a rule accepts the packet in a table (None: on to the next table)."""

    def mark_note(self, mark: int) -> str: ...

    def finish(self, ex: Explanation) -> None:
        """Notes after the packet passed every table."""


class Walker(Generic[RuleT]):
    def __init__(self, family: RuleFamily[RuleT]) -> None:
        self.family = family

    def explain(self, packet: Packet) -> Explanation:
        fam = self.family
        ex = Explanation(fam.backend, packet)
        state = PathState(packet, packet.mark, packet.ctmark)
        for table in TABLES:
            if table == "nat" and packet.state != "NEW":
                ex.notes.append(fam.nat_skip_note(packet))
                continue
            mark_before = state.mark
            verdict = self.walk_table(table, state, ex)
            ex.notes += state.notes
            state.notes = []
            if verdict is not None:
                ex.verdict = verdict
                return ex
            if table == "mangle" and packet.direction == "out" and state.mark != mark_before:
                ex.notes.append(fam.mark_note(state.mark))
        ex.verdict = pass_verdict(packet)
        fam.finish(ex)
        return ex

    def walk_table(self, table: str, state: PathState, ex: Explanation) -> Verdict | None:
        """Walk one table's base chain. Returns a final verdict, or None to continue to the next table."""
        fam = self.family
        hook = hook_of(state.packet)
        base = fam.entry(table, hook, ex)
        if base is None or isinstance(base, Verdict):
            return base
        hops = [f"{table} {base}"]
        stack: list[tuple[str, int]] = []
        chain, i = base, 0
        try:
            while True:
                rules = fam.rules(table, chain)
                if i >= len(rules):
                    if not stack:
                        return self._leave(table, base, state, hops)
                    hops.append(f"end of {chain}, back to {stack[-1][0]}")
                    chain, i = stack.pop()
                    continue
                rule = rules[i]
                i += 1
                step = fam.run(rule, state, table, chain, hook)
                if step.outcome is Outcome.NO_MATCH:
                    continue
                hops.append(f"{chain} rule {i} ({fam.describe(rule)})")
                if step.outcome is Outcome.UNCERTAIN:
                    raise Uncertain(step.hop)
                if step.hop:
                    hops.append(step.hop)
                if step.outcome is Outcome.CONTINUE:
                    continue
                if step.outcome is Outcome.JUMP:
                    if len(stack) >= MAX_DEPTH:
                        raise Uncertain("chain nesting too deep")
                    stack.append((chain, i))
                    chain, i = step.chain, 0
                elif step.outcome is Outcome.GOTO:
                    chain, i = step.chain, 0
                elif step.outcome is Outcome.RETURN:
                    if not stack:
                        return self._leave(table, base, state, hops)
                    chain, i = stack.pop()
                elif step.outcome is Outcome.ACCEPT:
                    return fam.accepted(state)
                elif step.outcome is Outcome.DROP:
                    return Verdict("drop", f"{step.hop} in {table} {chain}")
                elif step.outcome is Outcome.VERDICT:
                    return step.verdict
        except Uncertain as exc:
            hops.append(f"{chain} rule {i}: UNCERTAIN ({exc})")
            return uncertain_verdict(f"uncertain: {exc}; the path after {table} {chain} rule {i} is not known")
        finally:
            ex.paths.append(" -> ".join(hops))

    def _leave(self, table: str, base: str, state: PathState, hops: list[str]) -> Verdict | None:
        hop, verdict = self.family.leave(table, base, state)
        hops.append(hop)
        return verdict
