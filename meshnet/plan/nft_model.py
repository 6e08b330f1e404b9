"""The nftables side of the rule model: Istio's `inet istio-proxy-*` tables as data.

nft rules are not translations of the iptables ones (Istio writes both by hand, with different
match orders and spellings), so they have their own builder and this small model.
"""

from __future__ import annotations

from meshnet.lite.records import dataclass, field

NFT_TABLES = ("nat", "mangle", "raw")
TABLE_PREFIX = "istio-proxy-"
# Base chains per table: (name, type, hook, priority), declared only when they hold rules.
BASE_CHAINS: dict[str, tuple[tuple[str, str, str, int], ...]] = {
    "nat": (("prerouting", "nat", "prerouting", -100), ("output", "nat", "output", -100)),
    "mangle": (("prerouting", "filter", "prerouting", -150), ("output", "route", "output", -150)),
    "raw": (("prerouting", "filter", "prerouting", -300), ("output", "filter", "output", -300)),
}
# Regular chains are declared in this per-table order (as Istio's nftables backend does).
REGULAR_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": ("istio-inbound", "istio-redirect", "istio-in-redirect", "istio-output", "istio-output-dns"),
    "mangle": ("istio-divert", "istio-tproxy", "istio-inbound", "istio-drop"),
    "raw": ("istio-inbound", "istio-output-dns"),
}


@dataclass(frozen=True)
class NftRule:
    """`matches` come before the counter, `action` after it (e.g. ('jump istio-output',))."""

    table: str
    chain: str
    matches: tuple[str, ...]
    action: tuple[str, ...]
    family: int | None = None  # 4 / 6 when the rule is address-family specific
    counter: bool = True  # Istio's ambient jumps carry no counter

    def body(self) -> str:
        if not self.counter:
            return " ".join((*self.matches, *self.action))
        return " ".join((*self.matches, "counter", *self.action))

    @property
    def jump_target(self) -> str | None:
        if len(self.action) == 1 and self.action[0].startswith(("jump ", "goto ")):
            return self.action[0].split(" ", 1)[1]
        return None


@dataclass(frozen=True)
class NftOp:
    rule: NftRule
    index: int | None = None  # None = append; else Istio's `-I CHAIN n` as 0-based index n-1


# Istio's ambient tables (cni/pkg/nftables): same three tables, their own prefix and chains; the
# node's table holds only the probe SNAT in postrouting.
AMBIENT_PREFIX = "istio-ambient-"
AMBIENT_BASE_CHAINS: dict[str, tuple[tuple[str, str, str, int], ...]] = {
    "nat": (*BASE_CHAINS["nat"], ("postrouting", "nat", "postrouting", 100)),
    "mangle": BASE_CHAINS["mangle"],
    "raw": BASE_CHAINS["raw"],
}
AMBIENT_REGULAR_CHAINS: dict[str, tuple[str, ...]] = {t: ("istio-prerouting", "istio-output") for t in NFT_TABLES}
LAYOUTS = {
    "sidecar": (TABLE_PREFIX, BASE_CHAINS, REGULAR_CHAINS),
    "ambient": (AMBIENT_PREFIX, AMBIENT_BASE_CHAINS, AMBIENT_REGULAR_CHAINS),
}


@dataclass
class NftPlan:
    ops: list[NftOp] = field(default_factory=list)
    layout: str = "sidecar"  # a key of LAYOUTS: table prefix and chain declarations

    @property
    def prefix(self) -> str:
        return LAYOUTS[self.layout][0]

    def tables(self) -> list[str]:
        used = {op.rule.table for op in self.ops}
        return [t for t in NFT_TABLES if t in used]

    def chain_rules(self) -> dict[tuple[str, str], list[NftRule]]:
        """Kernel order of every chain after the transaction."""
        chains: dict[tuple[str, str], list[NftRule]] = {}
        for op in self.ops:
            rules = chains.setdefault((op.rule.table, op.rule.chain), [])
            if op.index is None or op.index >= len(rules):
                rules.append(op.rule)
            else:
                rules.insert(op.index, op.rule)
        return chains
