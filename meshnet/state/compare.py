"""Compare an expected RuleSet with a live one: what Istio would call residue and delta, with detail.

Scope: every ISTIO_* chain is compared exactly (missing, extra and reordered rules); builtin
chains are compared only for the rules the spec puts there and for jumps into ISTIO_* chains,
because other software (kube-proxy, CNI plugins) may legitimately add rules to them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from meshnet.lite.records import dataclass, field
from meshnet.plan.model import Rule, RuleSet


@dataclass(frozen=True)
class DiffEntry:
    kind: str  # "missing" | "extra" | "reordered" | "extra-chain" | "missing-chain"
    family: int
    table: str
    chain: str
    rule: Rule | None = None
    detail: str = ""

    def line(self) -> str:
        fam = "ip6tables" if self.family == 6 else "iptables"
        if self.rule is not None:
            sign = {"missing": "-", "extra": "+"}.get(self.kind, "~")
            return f"{sign} {fam} -t {self.table} {self.rule}"
        return f"~ {fam} -t {self.table} {self.kind} {self.chain}{(': ' + self.detail) if self.detail else ''}"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "family": self.family, "table": self.table, "chain": self.chain,
                "rule": str(self.rule) if self.rule else None, "detail": self.detail, "line": self.line()}


@dataclass
class RuleSetDiff:
    entries: list[DiffEntry] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.entries

    def lines(self) -> list[str]:
        return [e.line() for e in self.entries]

    def extend(self, other: RuleSetDiff) -> None:
        self.entries.extend(other.entries)


def is_istio_chain(name: str) -> bool:
    return name.startswith("ISTIO_")


def _ours_in_builtin(rule: Rule) -> bool:
    return is_istio_chain(rule.target.name)


def diff_rulesets(expected: RuleSet, live: RuleSet) -> RuleSetDiff:
    diff = RuleSetDiff()
    fam = expected.family
    tables = list(expected.tables) + [t for t in live.tables if t not in expected.tables]
    for table in tables:
        exp_chains = expected.chain_names(table)
        live_chains = live.chain_names(table)
        for chain in exp_chains + [c for c in live_chains if c not in exp_chains]:
            exp_rules = expected.rules(table, chain)
            live_rules = live.rules(table, chain)
            if is_istio_chain(chain):
                if chain not in live_chains:
                    diff.entries.append(DiffEntry("missing-chain", fam, table, chain))
                if chain not in exp_chains:
                    diff.entries.append(DiffEntry("extra-chain", fam, table, chain,
                                                  detail=f"{len(live_rules)} rules"))
                _compare_exact(diff, fam, table, chain, exp_rules, live_rules)
            else:
                exp_keys = {r.key() for r in exp_rules}
                ours_live = [r for r in live_rules if r.key() in exp_keys or _ours_in_builtin(r)]
                _compare_exact(diff, fam, table, chain, exp_rules, ours_live)
    return diff


def keyed_diff(expected: Sequence[Hashable], live: Sequence[Hashable]) -> tuple[list[int], list[int], bool]:
    """(indexes of expected items live lacks, indexes of live items not expected, same items reordered).

    Items compare by key with multiplicity: a rule expected twice and present once is missing once.
    """
    missing: list[int] = []
    left = Counter(live)
    for i, key in enumerate(expected):
        if left[key] > 0:
            left[key] -= 1
        else:
            missing.append(i)
    extra: list[int] = []
    left = Counter(expected)
    for i, key in enumerate(live):
        if left[key] > 0:
            left[key] -= 1
        else:
            extra.append(i)
    return missing, extra, not missing and not extra and list(expected) != list(live)


def _compare_exact(diff: RuleSetDiff, fam: int, table: str, chain: str, exp: list[Rule], live: list[Rule]) -> None:
    missing, extra, reordered = keyed_diff([r.key() for r in exp], [r.key() for r in live])
    diff.entries.extend(DiffEntry("missing", fam, table, chain, exp[i]) for i in missing)
    diff.entries.extend(DiffEntry("extra", fam, table, chain, live[i]) for i in extra)
    if reordered:
        diff.entries.append(DiffEntry("reordered", fam, table, chain, detail="same rules, different order"))
