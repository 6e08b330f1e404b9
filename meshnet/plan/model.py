"""The rule model: tables -> chains -> rules as typed data, for iptables (per family).

Builders emit an ordered list of operations (append / insert at a position), exactly as Istio
emits them; `RuleSet.from_ops` replays them into the kernel's resulting order. Parsers of live
state (iptables-save) produce the same RuleSet type, so diff is a comparison of values and
explain walks one value.
"""

from __future__ import annotations

from meshnet.lite.records import dataclass, field
from meshnet.plan.match_kinds import COMMENT as COMMENT  # re-exported: the verbatim kinds
from meshnet.plan.match_kinds import KINDS, OPAQUE, kind_of

TYPE_CHECKING = False  # `typing` costs ~4 ms at start-up; only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Literal

    Family = Literal[4, 6]
else:
    Family = int
BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
BUILTIN_TARGETS = frozenset({"ACCEPT", "RETURN", "DROP", "REJECT"}) | BUILTIN_CHAINS
# Every target iptables-extensions(8) lists: a `-j NAME` with one of these names is not a chain jump.
EXTENSION_TARGETS = frozenset({
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DNPT", "DSCP", "ECN",
    "HL", "HMARK", "IDLETIMER", "LED", "LOG", "MARK", "MASQUERADE", "MIRROR", "NETMAP", "NFLOG", "NFQUEUE",
    "NOTRACK", "RATEEST", "REDIRECT", "SAME", "SECMARK", "SET", "SNAT", "SNPT", "SYNPROXY", "TCPMSS",
    "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG",
})
TABLE_ORDER = ("filter", "mangle", "nat", "raw")  # Istio emits restore tables sorted by name

# The kinds of match and everything about each (restore tokens, iptables-save spelling, canonical
# value, explain's evaluation) are one table: meshnet.plan.match_kinds.


@dataclass(frozen=True)
class Match:
    kind: str  # a key of match_kinds.KINDS
    value: str
    negated: bool = False

    def tokens(self) -> list[str]:
        return kind_of(self.kind).tokens(self.value, self.negated)

    def __str__(self) -> str:
        return " ".join(self.tokens())

    def canonical(self) -> Match:
        """The form the kernel prints back: addresses masked to their network, owners as ids, marks decimal."""
        value = kind_of(self.kind).canonical(self.value)
        return self if value == self.value else Match(self.kind, value, self.negated)


@dataclass(frozen=True)
class Target:
    """A jump (`name` is a chain or ACCEPT/RETURN/DROP, no args) or an extension target with args.

    Args are kept in Istio's spelling (e.g. ('--to-ports', '15001')); parsers of iptables-save
    output normalise the kernel's spelling back to this form. Options the parser does not model
    are kept in `opaque`, verbatim as iptables-save printed them (then `args` is empty).
    `goto` is `-g CHAIN`: a RETURN in that chain goes back past the rule that went there.
    """

    name: str
    args: tuple[str, ...] = ()
    opaque: str = ""
    goto: bool = False

    @property
    def is_jump_to_chain(self) -> bool:
        return not self.args and not self.opaque and self.name not in BUILTIN_TARGETS \
            and self.name not in EXTENSION_TARGETS

    def tokens(self) -> list[str]:
        if not self.name:
            return []  # a rule without a target (it only counts)
        return ["-g" if self.goto else "-j", self.name, *self.args, *([self.opaque] if self.opaque else [])]

    def canonical(self) -> Target:
        # Istio writes `--to-port` for the UDP DNS redirect; the kernel prints `--to-ports`.
        if self.name == "REDIRECT" and self.args[:1] == ("--to-port",):
            return Target(self.name, ("--to-ports", *self.args[1:]))
        # `--restore-mark` with full masks is the plain form (the parser reads both to that).
        if self.name == "CONNMARK" and self.args == ("--restore-mark", "--nfmask", "0xffffffff",
                                                     "--ctmask", "0xffffffff"):
            return Target(self.name, ("--restore-mark",))
        return self


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    matches: tuple[Match, ...]
    target: Target

    def spec_tokens(self) -> list[str]:
        out: list[str] = []
        for m in self.matches:
            out.extend(m.tokens())
        return out + self.target.tokens()

    def spec_text(self) -> str:
        """The rule body, as Istio writes it after `-A CHAIN`."""
        return " ".join(self.spec_tokens())

    def key(self) -> tuple[str, str, frozenset[Match], Target]:
        """Identity for comparison: match order inside one rule does not change its meaning.

        Opaque parts and comments compare verbatim, as the kernel printed them.
        """
        # A bare `-m tcp` adds nothing to `-p tcp`; the kernel prints it wherever a port is matched.
        matches = frozenset(m.canonical() for m in self.matches if not KINDS[m.kind].implied)
        return (self.table, self.chain, matches, self.target.canonical())

    @property
    def opaque_parts(self) -> list[str]:
        """The text of every part meshnet does not model (matches, then target options)."""
        parts = [m.value for m in self.matches if m.kind == OPAQUE]
        return parts + ([f"{self.target.name} {self.target.opaque}"] if self.target.opaque else [])

    def __str__(self) -> str:
        return f"-A {self.chain} {self.spec_text()}"


@dataclass(frozen=True)
class Op:
    """One emitted operation: append (position None) or insert at a 1-based position."""

    rule: Rule
    position: int | None = None

    def restore_line(self) -> str:
        if self.position is None:
            return f"-A {self.rule.chain} {self.rule.spec_text()}"
        return f"-I {self.rule.chain} {self.position} {self.rule.spec_text()}"


@dataclass
class Chain:
    name: str
    rules: list[Rule] = field(default_factory=list)
    policy: str | None = None  # builtin chains only

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    def chain(self, name: str) -> Chain:
        if name not in self.chains:
            self.chains[name] = Chain(name)
        return self.chains[name]


@dataclass
class RuleSet:
    """The state of one family's tables, in kernel order."""

    family: Family
    tables: dict[str, Table] = field(default_factory=dict)
    # Tables iptables-nft-save could not show ("incompatible": nft rules it cannot print): unknown.
    unreadable: set[str] = field(default_factory=set)

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(name)
        return self.tables[name]

    def rules(self, table: str, chain: str) -> list[Rule]:
        t = self.tables.get(table)
        if t is None or chain not in t.chains:
            return []
        return t.chains[chain].rules

    def chain_names(self, table: str) -> list[str]:
        t = self.tables.get(table)
        return list(t.chains) if t else []

    def istio_chains(self) -> list[tuple[str, str]]:
        return [(t.name, c) for t in self.tables.values() for c in t.chains if c.startswith("ISTIO_")]

    def add(self, op: Op) -> None:
        chain = self.table(op.rule.table).chain(op.rule.chain)
        if op.position is None:
            chain.rules.append(op.rule)
        else:
            chain.rules.insert(op.position - 1, op.rule)
        if op.rule.target.is_jump_to_chain:
            self.table(op.rule.table).chain(op.rule.target.name)

    @classmethod
    def from_ops(cls, family: Family, ops: Iterable[Op]) -> RuleSet:
        rs = cls(family)
        for op in ops:
            rs.add(op)
        return rs

    def is_empty(self) -> bool:
        return not any(c.rules or not c.builtin for t in self.tables.values() for c in t.chains.values())


@dataclass(frozen=True)
class IptablesPlan:
    """What a builder emits: per-family operation lists, in emission order."""

    v4: tuple[Op, ...]
    v6: tuple[Op, ...]
    ipv6: bool

    def ops(self, family: Family) -> tuple[Op, ...]:
        return self.v4 if family == 4 else self.v6

    def ruleset(self, family: Family) -> RuleSet:
        return RuleSet.from_ops(family, self.ops(family))

    def families(self) -> tuple[Family, ...]:
        return (4, 6) if self.ipv6 else (4,)
