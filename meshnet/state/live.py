"""A namespace's live interception state as models: which backends hold rules, and those rules.

Reading is side-effect free: legacy tables are only dumped when /proc says they exist (an
`iptables-legacy-save` probe would otherwise instantiate them), iptables-nft and nft only read.
Errors of one reader are recorded, not raised, so a diagnosis can still use the others.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from meshnet.apply.backends import LEGACY, NFT, NFTABLES
from meshnet.diagnose.bundle.source import has_tool
from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass, field
from meshnet.plan.model import Family, RuleSet

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.state.parse_nft import NftRuleset

FAMILIES: tuple[Family, ...] = (4, 6)
_COUNTERS = re.compile(r"^\[\d+:\d+\] ", re.MULTILINE)  # `save -c` prefixes each rule with [packets:bytes]


@dataclass
class LiveState:
    label: str
    # backend ("iptables-legacy" / "iptables-nft") -> family -> parsed rules (only tables that exist)
    xtables: dict[str, dict[Family, RuleSet]] = field(default_factory=dict)
    nft: NftRuleset | None = None  # Istio's native tables (None: nft not readable)
    legacy_tables: dict[int, list[str]] = field(default_factory=dict)  # from /proc, per family
    errors: list[str] = field(default_factory=list)

    def ruleset(self, backend: str, family: Family) -> RuleSet:
        return self.xtables.get(backend, {}).get(family) or RuleSet(family)

    def has_istio(self, backend: str) -> bool:
        if backend == NFTABLES:
            return self.nft is not None and not self.nft.empty
        return any(rs.istio_chains() for rs in self.xtables.get(backend, {}).values())

    def istio_backends(self) -> list[str]:
        """Backends holding any Istio chain or table, in a fixed order."""
        return [b for b in (LEGACY, NFT, NFTABLES) if self.has_istio(b)]

    def rule_count(self, backend: str) -> int:
        """All rules (Istio's or not) a backend holds: tells which backend a namespace 'uses'."""
        if backend == NFTABLES:
            return 0 if self.nft is None else sum(len(v) for v in self.nft.chains.values())
        return sum(len(c.rules) for rs in self.xtables.get(backend, {}).values()
                   for t in rs.tables.values() for c in t.chains.values())

    def families(self, backend: str) -> list[Family]:
        return [f for f, rs in self.xtables.get(backend, {}).items() if rs.istio_chains()]


def read_live(netns: Netns, *, nft_native: bool = True) -> LiveState:
    """Read every backend of both families in `netns` (read-only)."""
    from meshnet.apply.backends.xtables import Xtables, legacy_tables
    from meshnet.state.parse_save import parse_save

    state = LiveState(netns.label)
    for variant, backend in (("legacy", LEGACY), ("nft", NFT)):
        x = Xtables(variant)
        if not has_tool(netns, x.binary(4, "restore")):
            state.errors.append(f"{x.binary(4, 'save')} not installed: {backend} rules not read")
            continue
        for fam in FAMILIES:
            if variant == "legacy":
                state.legacy_tables[fam] = legacy_tables(netns, fam)
            try:
                text = _COUNTERS.sub("", x.save(netns, fam))
                state.xtables.setdefault(backend, {})[fam] = parse_save(text, fam)
            except MeshnetError as exc:
                state.errors.append(str(exc))
    if nft_native:
        state.nft = read_nft(netns, state.errors)
    return state


def read_nft(netns: Netns, errors: list[str]) -> NftRuleset | None:
    from meshnet.state.parse_nft import parse_nft_json

    if not has_tool(netns, "nft"):
        errors.append("nft not installed: native nftables rules not read")
        return None
    try:
        cp = netns.run(["nft", "-j", "list", "ruleset"], check=False)
    except MeshnetError as exc:
        errors.append(str(exc))
        return None
    if cp.returncode != 0:
        errors.append(f"[{netns.label}] nft -j list ruleset: {cp.stderr.strip() or cp.returncode}")
        return None
    try:
        rs = parse_nft_json(cp.stdout)
        if rs.empty:  # an ambient pod: istio-cni's `istio-ambient-*` tables instead
            from meshnet.plan.nft_model import AMBIENT_PREFIX

            ambient = parse_nft_json(cp.stdout, AMBIENT_PREFIX)
            if not ambient.empty:
                return ambient
        return rs
    except MeshnetError as exc:
        errors.append(str(exc))
        return None


def host_backend(host: Netns) -> tuple[str | None, str]:
    """Which backend the host's own rules live in (read-only), and the evidence for it.

    Legacy is read from /proc only; iptables-nft-save only reads. None when the host holds no
    rules in either (then nothing can be said about a mismatch).
    """
    from meshnet.apply.backends.xtables import Xtables, legacy_tables

    legacy = legacy_tables(host, 4) + legacy_tables(host, 6)
    nft_rules = 0
    for fam in FAMILIES:
        try:
            text = Xtables("nft").save(host, fam)
        except MeshnetError:
            continue
        nft_rules += _count_rules(text)
    legacy_rules = 0
    if legacy:
        for fam in FAMILIES:
            try:
                text = Xtables("legacy").save(host, fam)
            except MeshnetError:
                continue
            legacy_rules += _count_rules(text)
    evidence = f"host ({host.label}): {nft_rules} iptables-nft rules, {legacy_rules} iptables-legacy rules"
    if nft_rules > legacy_rules:
        return NFT, evidence
    if legacy_rules > nft_rules:
        return LEGACY, evidence
    return None, evidence


def _count_rules(save_text: str) -> int:
    return sum(1 for line in _COUNTERS.sub("", save_text).splitlines() if line.startswith("-A "))
