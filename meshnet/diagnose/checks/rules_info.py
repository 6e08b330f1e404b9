"""Facts about the live Istio rules that several checks need, for every backend alike."""

from __future__ import annotations

from meshnet.apply.backends import LEGACY, NFT, NFTABLES
from meshnet.lite.records import dataclass, field
from meshnet.plan.model import Rule
from meshnet.plan.nft_model import NftRule
from meshnet.state.live import LiveState
from meshnet.state.parse_nft import NftRuleset


@dataclass
class RuleFacts:
    captures: set[tuple[str, int]] = field(default_factory=set)  # (proto, port) of REDIRECT/TPROXY targets
    tproxy_marks: dict[int, set[int]] = field(default_factory=dict)  # family -> marks set by TPROXY
    dns_capture: list[str] = field(default_factory=list)  # rules redirecting port 53
    ct_zones: list[str] = field(default_factory=list)  # rules setting a conntrack zone
    drop_invalid: list[str] = field(default_factory=list)  # rules dropping ctstate INVALID


def _proto(rule: Rule) -> str:
    return next((m.value for m in rule.matches if m.kind == "proto" and not m.negated), "tcp")


def _is_dns(rule: Rule) -> bool:
    return any(m.kind in ("dport", "dports") and "53" in m.value.split(",") and not m.negated for m in rule.matches)


def facts(live: LiveState) -> RuleFacts:
    f = RuleFacts()
    for backend in (LEGACY, NFT):
        for fam, rs in live.xtables.get(backend, {}).items():
            for table in rs.tables.values():
                for chain in table.chains.values():
                    for rule in chain.rules:
                        _xt_rule(f, fam, rule, backend)
    if live.nft is not None:
        for rules in live.nft.chains.values():
            for nft_rule in rules:
                _nft_rule(f, live.nft, nft_rule)
    return f


def _xt_rule(f: RuleFacts, fam: int, rule: Rule, backend: str) -> None:
    t = rule.target
    where = f"{backend} v{fam} -t {rule.table} {rule}"
    # Istio captures only from its ISTIO_* chains: another program's REDIRECT/TPROXY/CT is not Istio's.
    ours = rule.chain.startswith("ISTIO_")
    if not ours:
        pass
    elif t.name == "REDIRECT" and "--to-ports" in t.args:
        port = int(t.args[t.args.index("--to-ports") + 1].split("-")[0])
        f.captures.add((_proto(rule), port))
        if _is_dns(rule):
            f.dns_capture.append(where)
    elif t.name == "TPROXY" and "--on-port" in t.args:
        f.captures.add(("tcp", int(t.args[t.args.index("--on-port") + 1])))
        mark = t.args[t.args.index("--tproxy-mark") + 1] if "--tproxy-mark" in t.args else "0"
        f.tproxy_marks.setdefault(fam, set()).add(int(mark.split("/")[0], 0))
    elif t.name == "CT" and "--zone" in t.args:
        f.ct_zones.append(where)
    if any(m.kind == "ctstate" and "INVALID" in m.value.upper() and not m.negated for m in rule.matches) and \
            (t.name == "DROP" or t.name == "ISTIO_DROP"):
        f.drop_invalid.append(where)


def _nft_rule(f: RuleFacts, ruleset: NftRuleset, rule: NftRule) -> None:
    """The same facts from one rule of Istio's native nft tables (their `ruleset`)."""
    text = rule.body()
    toks = (*rule.matches, *rule.action)
    for tok in toks:
        words = tok.split(" ")
        if words[0] in ("redirect", "tproxy") and ":" in words[-1]:
            proto = "udp" if any(t.startswith("udp ") or t == "meta l4proto udp" for t in toks) else "tcp"
            f.captures.add((proto, int(words[-1].rsplit(":", 1)[1])))
            if words[0] == "redirect" and any(t.endswith("dport 53") for t in toks):
                f.dns_capture.append(f"{NFTABLES} {rule.table} {rule.chain}: {text}")
        if words[0] == "tproxy":
            marks = [int(t.split()[-1], 0) for t in toks if t.startswith("meta mark set ")
                     and t.split()[-1].isdigit()]
            f.tproxy_marks.setdefault(6 if words[1] == "ip6" else 4, set()).update(marks)
        if tok.startswith("ct zone set "):
            f.ct_zones.append(f"{NFTABLES} {rule.table} {rule.chain}: {text}")
    if "ct state invalid" in rule.matches and (rule.action == ("drop",) or rule.jump_target):
        target = rule.jump_target
        if target is None or ruleset.rules(rule.table, target)[:1] and \
                ruleset.rules(rule.table, target)[0].action == ("drop",):
            f.drop_invalid.append(f"{NFTABLES} {rule.table} {rule.chain}: {text}")


def istio_tproxy_marks(live: LiveState) -> dict[int, set[int]]:
    """Marks set by Istio's own TPROXY rules (in ISTIO_* chains, or Istio's nft tables), per family.

    A foreign TPROXY rule beside Istio's (someone's own transparent proxy) brings its own routing:
    its missing route is not Istio's problem."""
    out: dict[int, set[int]] = {}
    for backend in (LEGACY, NFT):
        for fam, rs in live.xtables.get(backend, {}).items():
            for table in rs.tables.values():
                for chain in table.chains.values():
                    if not chain.name.startswith("ISTIO_"):
                        continue
                    f = RuleFacts()
                    for rule in chain.rules:
                        _xt_rule(f, fam, rule, backend)
                    for family, marks in f.tproxy_marks.items():
                        out.setdefault(family, set()).update(marks)
    nft_only = RuleFacts()
    if live.nft is not None:  # live.nft holds Istio's inet istio-proxy-* tables only
        nft_only = facts(LiveState(live.label, nft=live.nft))
    for family, marks in nft_only.tproxy_marks.items():
        out.setdefault(family, set()).update(marks)
    return out
