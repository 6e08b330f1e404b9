"""Live rules against an expected spec (missing / extra / reordered per chain), and, without a
spec, the structural holes any Istio rule set must not have (a capture chain nobody jumps to,
a redirect chain without its REDIRECT)."""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT, NFTABLES
from meshnet.diagnose.checks import Context, Finding
from meshnet.lite.records import dataclass
from meshnet.plan.model import RuleSet
from meshnet.plan.nft_model import NftRule
from meshnet.spec.spec import Spec
from meshnet.state.compare import RuleSetDiff, diff_rulesets
from meshnet.state.live import LiveState


@dataclass(frozen=True)
class NftDiffEntry:
    kind: str  # missing | extra | reordered
    table: str
    chain: str
    rule: NftRule | None = None
    detail: str = ""

    def line(self) -> str:
        where = f"nft inet istio-proxy-{self.table} {self.chain}"
        if self.rule is not None:
            return f"{'-' if self.kind == 'missing' else '+'} {where}: {self.rule.body()}"
        return f"~ {where}: {self.kind}{(': ' + self.detail) if self.detail else ''}"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "family": None, "table": self.table, "chain": self.chain,
                "rule": self.rule.body() if self.rule else None, "detail": self.detail, "line": self.line()}


@dataclass
class LiveDiff:
    backends: list[str]
    xtables: RuleSetDiff
    nft: list[NftDiffEntry]

    @property
    def empty(self) -> bool:
        return self.xtables.empty and not self.nft

    def lines(self) -> list[str]:
        return self.xtables.lines() + [e.line() for e in self.nft]

    def to_dict(self) -> dict[str, object]:
        return {"backends": self.backends, "in_sync": self.empty,
                "entries": [e.to_dict() for e in self.xtables.entries] + [e.to_dict() for e in self.nft]}


def diff_live(live: LiveState, spec: Spec, default_backend: str) -> LiveDiff:
    """Diff every backend that holds Istio rules (or, if none, the one Istio would use) against spec."""
    backends = live.istio_backends() or [default_backend]
    xt = RuleSetDiff()
    nft: list[NftDiffEntry] = []
    for backend in backends:
        if backend == NFTABLES:
            from meshnet.plan.nft_builder import build_nft

            nft += diff_nft(build_nft(spec).chain_rules(), live.nft.chains if live.nft else {})
            continue
        from meshnet.plan.istio_builder import build_iptables

        plan = build_iptables(spec)
        for fam in (4, 6):
            expected = plan.ruleset(fam) if fam in plan.families() else RuleSet(fam)
            xt.extend(diff_rulesets(expected, live.ruleset(backend, fam)))
    return LiveDiff(backends, xt, nft)


def diff_nft(expected: dict[tuple[str, str], list[NftRule]],
             live: dict[tuple[str, str], list[NftRule]]) -> list[NftDiffEntry]:
    from meshnet.state.compare import keyed_diff
    from meshnet.state.parse_nft import nft_key

    out: list[NftDiffEntry] = []
    for table, chain in [*expected, *(k for k in live if k not in expected)]:
        exp, got = expected.get((table, chain), []), live.get((table, chain), [])
        missing, extra, reordered = keyed_diff([nft_key(r) for r in exp], [nft_key(r) for r in got])
        out.extend(NftDiffEntry("missing", table, chain, exp[i]) for i in missing)
        out.extend(NftDiffEntry("extra", table, chain, got[i]) for i in extra)
        if reordered:
            out.append(NftDiffEntry("reordered", table, chain, detail="same rules, different order"))
    return out


# ----------------------------------------------------------------- structure (no spec given)
# (table, Istio chain) -> builtin chain that must jump into it when it holds rules.
_ENTRY = {("nat", "ISTIO_OUTPUT"): "OUTPUT", ("nat", "ISTIO_INBOUND"): "PREROUTING",
          ("mangle", "ISTIO_INBOUND"): "PREROUTING", ("raw", "ISTIO_OUTPUT_DNS"): "OUTPUT",
          ("raw", "ISTIO_INBOUND"): "PREROUTING"}
# Istio chain -> the target it exists for.
_TERMINAL = {"ISTIO_REDIRECT": "REDIRECT", "ISTIO_IN_REDIRECT": "REDIRECT", "ISTIO_TPROXY": "TPROXY"}
_NFT_ENTRY = {("nat", "istio-output"): "output", ("nat", "istio-inbound"): "prerouting",
              ("mangle", "istio-inbound"): "prerouting", ("raw", "istio-output-dns"): "output",
              ("raw", "istio-inbound"): "prerouting"}
_NFT_TERMINAL = {"istio-redirect": "redirect", "istio-in-redirect": "redirect", "istio-tproxy": "tproxy"}


def structural_holes(live: LiveState) -> list[str]:
    holes: list[str] = []
    for backend in (LEGACY, NFT):
        for fam, rs in live.xtables.get(backend, {}).items():
            holes += [f"{backend} v{fam}: {h}" for h in _xt_holes(rs)]
    if live.nft is not None and not live.nft.empty:
        holes += [f"{NFTABLES}: {h}" for h in _nft_holes(live)]
    return holes


def _xt_holes(rs: RuleSet) -> list[str]:
    out = []
    for (table_name, chain), builtin in _ENTRY.items():
        # Only chains that act need the jump: in TPROXY mode Istio leaves nat ISTIO_INBOUND with
        # a lone RETURN rule and no PREROUTING jump.
        acting = [r for r in rs.rules(table_name, chain) if r.target.name != "RETURN"]
        if acting and not any(r.target.name == chain for r in rs.rules(table_name, builtin)):
            out.append(f"-t {table_name} {chain} has {len(rs.rules(table_name, chain))} rules but {builtin} "
                       f"does not jump to it (-A {builtin} ... -j {chain} missing)")
    for table in rs.tables.values():
        jumped = {r.target.name for c in table.chains.values() for r in c.rules}
        for chain, target in _TERMINAL.items():
            if chain in jumped and not any(r.target.name == target for r in rs.rules(table.name, chain)):
                out.append(f"-t {table.name} {chain} is jumped to but has no {target} rule")
    return out


def _nft_holes(live: LiveState) -> list[str]:
    assert live.nft is not None
    rs = live.nft
    out = []
    for (table, chain), base in _NFT_ENTRY.items():
        acting = [r for r in rs.rules(table, chain) if r.action != ("return",)]
        if acting and not any(r.jump_target == chain for r in rs.rules(table, base)):
            out.append(f"inet istio-proxy-{table} {chain} has rules but {base} does not jump to it")
    for (table, chain), rules in rs.chains.items():
        word = _NFT_TERMINAL.get(chain)
        jumped = any(r.jump_target == chain for (t, _), rr in rs.chains.items() if t == table for r in rr)
        if word and jumped and not any(tok.startswith(word) for r in rules for tok in (*r.matches, *r.action)):
            out.append(f"inet istio-proxy-{table} {chain} is jumped to but has no {word} rule")
    return sorted(set(out))


def run(ctx: Context) -> list[Finding]:
    live = ctx.live
    if not live.istio_backends():
        return []  # no-interception-rules says it better
    if ctx.spec is not None:
        from meshnet.apply.applier import detect_backend

        diff = diff_live(live, ctx.spec, detect_backend(ctx.netns))
        if diff.empty:
            return []
        lines = diff.lines()
        return [Finding(
            "drift", "warning",
            f"the live rules differ from the expected spec ({len(lines)} difference(s) in {', '.join(diff.backends)})",
            lines[:40] + ([f"... {len(lines) - 40} more"] if len(lines) > 40 else []),
            "re-apply the spec (istio-iptables / `meshnet` apply with --reconcile), or find what edited the rules "
            "(another init container, a CNI chained plugin, a manual iptables command)")]
    if ctx.structure_explained:
        return []  # capture_probes already reported the broken capture, holes included
    holes = structural_holes(live)
    if not holes:
        return []
    return [Finding(
        "incomplete-rules", "critical",
        "the Istio chains are structurally incomplete: part of the traffic they should capture is not captured",
        holes,
        "re-apply the rules from the pod's spec (istio-iptables or the CNI plugin); run `meshnet diff` with the "
        "pod's flags to see exactly which rules are missing")]
