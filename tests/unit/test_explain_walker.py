"""explain's one walker over both rule families (meshnet.diagnose.explain.walker).

The same spec built as iptables rules and as Istio's nftables tables gives the same verdict for the
same packet (both walked by the one walker, each family behind its RuleFamily); the walker's own
rules (call stack, goto, depth limit, uncertain targets) on a minimal family of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from meshnet.diagnose.explain.iptables import explain_ruleset
from meshnet.diagnose.explain.nft import explain_nft
from meshnet.diagnose.explain.packet import Packet, owner_defaults, parse_packet
from meshnet.diagnose.explain.result import Explanation, Verdict
from meshnet.diagnose.explain.walker import MAX_DEPTH, Outcome, PathState, Step, Walker
from meshnet.lite.records import replace
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.nft_builder import build_nft
from meshnet.plan.nft_model import LAYOUTS
from meshnet.spec.flags import parse_istio_args
from meshnet.state.parse_nft import BaseChain, NftRuleset

BASE = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-i", "*", "-b", "*", "-d", "15090,15021"]
PACKETS = [
    "tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000",
    "tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1337",
    "tcp 10.0.0.5:41000 -> 127.0.0.1:15001 out uid=1000",
    "tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0",
    "tcp 10.1.1.1:5000 -> 10.0.0.5:15090 in iface=eth0",
    "tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0 state=ESTABLISHED",
    "udp 10.0.0.5:41000 -> 10.96.0.10:53 out uid=1000",
    "udp 10.0.0.5:41000 -> 10.96.0.10:53 out uid=1337",
    "tcp [fd00::2]:41000 -> [fd00::9]:80 out uid=1000",
    "tcp [fd00::9]:5000 -> [fd00::2]:8080 in iface=eth0",
]


def nft_ruleset(flags: list[str]) -> NftRuleset:
    spec, _ = parse_istio_args(flags, env={}, enable_ipv6=True)
    plan = build_nft(spec)
    _, bases, _ = LAYOUTS[plan.layout]
    base_chains = {(table, name): BaseChain(kind, hook, prio, "accept")
                   for table, chains in bases.items() for name, kind, hook, prio in chains}
    return NftRuleset(chains=plan.chain_rules(), base_chains=base_chains)


def packet(text: str) -> Packet:
    p, _ = owner_defaults(parse_packet(text))
    return replace(p, oif="eth0") if p.direction == "out" else p


@pytest.mark.parametrize("extra", [[], ["-m", "TPROXY"], ["--redirect-dns", "--capture-all-dns"]],
                         ids=["redirect", "tproxy", "dns"])
@pytest.mark.parametrize("text", PACKETS)
def test_iptables_and_nftables_rules_of_one_spec_give_one_verdict(extra: list[str], text: str) -> None:
    spec, _ = parse_istio_args([*BASE, *extra], env={}, enable_ipv6=True)
    p = packet(text)
    xt = explain_ruleset(build_iptables(spec).ruleset(p.family), p, "iptables-nft").verdict
    nft = explain_nft(nft_ruleset([*BASE, *extra]), p).verdict
    assert xt is not None and nft is not None
    assert (xt.kind, xt.port, xt.capture) == (nft.kind, nft.port, nft.capture), (xt.text, nft.text)


def test_the_verdicts_are_what_istio_does() -> None:
    spec, _ = parse_istio_args([*BASE, "--redirect-dns", "--capture-all-dns"], env={}, enable_ipv6=True)
    got = {}
    for text in PACKETS[:8]:
        p = packet(text)
        v = explain_ruleset(build_iptables(spec).ruleset(p.family), p, "iptables-nft").verdict
        assert v is not None
        got[text] = (v.kind, v.port)
    assert list(got.values()) == [("redirect", 15001), ("pass", None), ("pass", None), ("redirect", 15006),
                                  ("pass", None), ("pass", None), ("redirect", 15053), ("pass", None)]


# ----------------------------------------------------------------- the walker alone
class Chains:
    """A family whose rules are Steps: rule (chain, i) does exactly what it says."""

    backend = "toy"

    def __init__(self, chains: dict[str, list[Step]]) -> None:
        self.chains = chains

    def nat_skip_note(self, packet: Packet) -> str:
        return "nat skipped"

    def entry(self, table: str, hook: str, ex: Explanation) -> str | Verdict | None:
        return "base" if table == "nat" else None

    def rules(self, table: str, chain: str) -> Sequence[Step]:
        return self.chains.get(chain, [])

    def run(self, rule: Step, state: PathState, table: str, chain: str, hook: str) -> Step:
        return rule

    def describe(self, rule: Step) -> str:
        return rule.outcome.value

    def leave(self, table: str, base: str, state: PathState) -> tuple[str, Verdict | None]:
        return "policy accept", None

    def accepted(self, state: PathState) -> Verdict | None:
        return None

    def mark_note(self, mark: int) -> str:
        return ""

    def finish(self, ex: Explanation) -> None:
        ex.notes.append("finished")


def walk(chains: dict[str, list[Step]]) -> Explanation:
    return Walker(Chains(chains)).explain(packet("tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000"))


def test_jump_returns_after_the_rule_and_goto_returns_to_the_caller() -> None:
    drop = Step(Outcome.DROP, hop="DROP")
    ex = walk({"base": [Step(Outcome.JUMP, chain="a"), drop], "a": [Step(Outcome.GOTO, chain="b")],
               "b": [Step(Outcome.RETURN)]})
    assert ex.verdict == Verdict("drop", "DROP in nat base")
    assert ex.paths == ["nat base -> base rule 1 (jump) -> a rule 1 (goto) -> b rule 1 (return) -> base rule 2 (drop)"
                        " -> DROP"]


def test_falling_off_the_base_chain_is_its_policy_then_the_next_table() -> None:
    ex = walk({"base": [Step(Outcome.NO_MATCH), Step(Outcome.CONTINUE, hop="counted")]})
    assert ex.paths == ["nat base -> base rule 2 (continue) -> counted -> policy accept"]
    assert ex.verdict is not None and ex.verdict.kind == "pass" and ex.notes == ["finished"]


def test_a_loop_stops_at_the_depth_limit_as_uncertain() -> None:
    ex = walk({"base": [Step(Outcome.JUMP, chain="base")]})
    assert ex.verdict is not None and ex.verdict.kind == "uncertain"
    assert "chain nesting too deep" in ex.verdict.text
    assert ex.paths[0].count("base rule 1 (jump)") == MAX_DEPTH + 1


def test_an_unknown_target_is_uncertain_after_its_rule() -> None:
    ex = walk({"base": [Step(Outcome.UNCERTAIN, hop="target X is not evaluated")]})
    assert ex.paths == ["nat base -> base rule 1 (uncertain) -> base rule 1: UNCERTAIN (target X is not evaluated)"]
    assert ex.verdict == Verdict("uncertain", "uncertain: target X is not evaluated; the path after nat base rule 1 "
                                              "is not known")
