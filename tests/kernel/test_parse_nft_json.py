"""nft JSON parser: render -> `nft -f` in a fresh namespace -> `nft -j list ruleset` -> parse == builder.

The round trip runs for every shared golden nftables case; unit tests pin the spelling of single
expressions and that unknown expressions are kept and flagged, never dropped.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness.golden_cases import CASES, Case, golden_path
from harness.topology import Topology

from meshnet.plan.nft_builder import build_nft
from meshnet.plan.nft_model import NftRule
from meshnet.plan.render_nft import render_nft
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.resolvconf import parse_nameservers
from meshnet.spec.spec import Spec
from meshnet.state.parse_nft import is_unsupported, nft_key, parse_nft_json, rule_from_exprs

NFT_CASES = [c for c in CASES if golden_path("nftables", c.name).exists()]
# nft resolves group names when loading; "java" does not exist here (Istio's nft would fail too).
NEEDS_JAVA_GROUP = {"outbound-owner-groups", "ipv6-dns-outbound-owner-groups"}


def spec_of(case: Case) -> Spec:
    spec, _ = parse_istio_args(case.argv(), env=case.env, enable_ipv6=case.ipv6,
                               dns_servers=parse_nameservers(case.resolv))
    return spec


def keys(chains: dict[tuple[str, str], list[NftRule]]) -> dict[tuple[str, str], list[object]]:
    return {k: [nft_key(r) for r in v] for k, v in chains.items() if v}


@pytest.mark.netns
@pytest.mark.parametrize("case", [c for c in NFT_CASES if c.name not in NEEDS_JAVA_GROUP], ids=lambda c: c.name)
def test_round_trip_equals_builder(case: Case) -> None:
    spec = spec_of(case)
    plan = build_nft(spec)
    with Topology(ipv6=False) as topo:
        assert not topo.pod.is_current()
        topo.pod.run(["nft", "-f", "-"], input=render_nft(plan))
        live = parse_nft_json(topo.pod.run(["nft", "-j", "list", "ruleset"]).stdout)
    assert live.unsupported() == []
    assert keys(live.chains) == keys(plan.chain_rules())
    # Base chains come back with the hook/priority the transaction declared.
    assert all(bc.policy == "accept" for bc in live.base_chains.values())
    assert live.other_tables == []


@pytest.mark.netns
def test_round_trip_detects_a_changed_rule() -> None:
    """The comparison can fail: one port changed in the kernel shows up as a different key."""
    case = next(c for c in NFT_CASES if c.name == "inbound-ports-include")
    plan = build_nft(spec_of(case))
    text = render_nft(plan).replace("tcp dport 32000", "tcp dport 32001")
    with Topology(ipv6=False) as topo:
        topo.pod.run(["nft", "-f", "-"], input=text)
        live = parse_nft_json(topo.pod.run(["nft", "-j", "list", "ruleset"]).stdout)
    assert keys(live.chains) != keys(plan.chain_rules())
    assert any("tcp dport 32001" in r.matches for r in live.rules("nat", "istio-inbound"))


def _m(left: dict[str, object], right: object, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def test_expression_spelling() -> None:
    exprs: list[dict[str, Any]] = [
        _m({"meta": {"key": "oifname"}}, "lo"),
        _m({"payload": {"protocol": "ip6", "field": "daddr"}}, "::1", "!="),
        _m({"payload": {"protocol": "tcp", "field": "dport"}}, {"set": [53, 15008]}, "!="),
        _m({"meta": {"key": "skuid"}}, 1337),
        {"counter": {"packets": 3, "bytes": 180}},
        {"jump": {"target": "istio-in-redirect"}},
    ]
    rule = rule_from_exprs("nat", "istio-output", exprs)
    assert rule.matches == ("oifname lo", "ip6 daddr != ::1", "tcp dport != { 53, 15008 }", "skuid 1337")
    assert rule.action == ("jump istio-in-redirect",)
    assert rule.family == 6
    built = NftRule("nat", "istio-output", ("oifname lo", "meta l4proto tcp", "ip6 daddr != ::1/128",
                                            "tcp dport != { 53, 15008 }", "skuid 1337"), ("jump istio-in-redirect",))
    assert nft_key(rule) == nft_key(built)


def test_statements_and_ct() -> None:
    tproxy = rule_from_exprs("mangle", "istio-tproxy", [
        _m({"meta": {"key": "l4proto"}}, "tcp"),
        {"tproxy": {"family": "ip", "port": 15006}},
        {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1337}},
        {"counter": None}, {"accept": None}])
    assert tproxy.matches == ("meta l4proto tcp", "tproxy ip to :15006", "meta mark set 1337")
    assert tproxy.action == ("accept",)
    ct = rule_from_exprs("mangle", "prerouting", [
        _m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"counter": None},
        {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"meta": {"key": "mark"}}}}])
    assert ct.action == ("ct mark set mark",)
    assert nft_key(ct)[2] == nft_key(NftRule("mangle", "prerouting", ("ct state related,established",), ()))[2]
    zone = rule_from_exprs("raw", "x", [{"counter": None}, {"mangle": {"key": {"ct": {"key": "zone"}}, "value": 2}}])
    assert zone.action == ("ct zone set 2",)


def test_unknown_expression_is_kept_and_flagged() -> None:
    limit = {"limit": {"rate": 10, "per": "second"}}
    rule = rule_from_exprs("nat", "istio-output", [_m({"meta": {"key": "cpu"}}, 1), limit, {"accept": None}])
    assert is_unsupported(rule)
    assert rule.matches[0].startswith("unsupported:")
    assert any(a.startswith("unsupported:") and "limit" in a for a in rule.action)


def test_non_istio_tables_are_listed_not_parsed() -> None:
    doc = {"nftables": [{"table": {"family": "ip", "name": "nat"}},
                        {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "expr": [{"accept": None}]}},
                        {"table": {"family": "inet", "name": "istio-proxy-nat"}},
                        {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "output", "type": "nat",
                                   "hook": "output", "prio": -100, "policy": "accept"}}]}
    rs = parse_nft_json(json.dumps(doc))
    assert rs.other_tables == ["ip nat"]
    assert list(rs.chains) == [("nat", "output")]
    assert rs.base_chains[("nat", "output")].hook == "output"
