"""The native nft JSON parser against foreign tables and expressions (issue 10).

`data/foreign_nft.json` is `nft -j list ruleset` (nftables 1.0.6) of a namespace holding another
program's tables: sets, maps, named counters and quotas, vmaps, fib, jhash, numgen, log, limit, and
netdev/bridge tables. The kernel-level test is test_foreign_rules.py::test_nftables_backend_beside_foreign_nft_tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshnet.state.parse_nft import NftParseError, is_unsupported, parse_nft_json

FOREIGN = json.loads((Path(__file__).resolve().parents[1] / "data" / "foreign_nft.json").read_text())


def test_foreign_tables_are_named_not_parsed() -> None:
    live = parse_nft_json(json.dumps(FOREIGN))
    assert live.empty
    assert live.other_tables == ["inet mn-foreign", "netdev mn-ingress", "bridge mn-br"]


def _istio_items() -> list[dict[str, object]]:
    return [{"table": {"family": "inet", "name": "istio-proxy-nat", "handle": 1}},
            {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "prerouting", "handle": 1,
                       "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]


def test_foreign_expressions_in_istios_table_are_kept_as_unsupported() -> None:
    # Every rule of the foreign chain, moved into Istio's table: none is dropped, none raises.
    rules = [dict(i["rule"], table="istio-proxy-nat", chain="prerouting") for i in FOREIGN["nftables"]
             if "rule" in i and i["rule"]["table"] == "mn-foreign"]
    doc = {"nftables": [*_istio_items(), *({"rule": r} for r in rules)]}
    live = parse_nft_json(json.dumps(doc))
    parsed = live.rules("nat", "prerouting")
    assert len(parsed) == len(rules) == 11
    assert sum(is_unsupported(r) for r in parsed) >= 8  # sets, vmap, log, limit, fib, jhash, numgen, ...


@pytest.mark.parametrize("bad", [
    {"rule": {"family": "inet", "table": "istio-proxy-nat"}},  # no chain
    {"rule": {"family": "inet", "table": "istio-proxy-nat", "chain": "prerouting", "expr": {"odd": 1}}},
    {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "x", "hook": "input", "prio": "weird"}},
    {"table": "not a dict"}, ["a", "list"], "a string", {"rule": None}, {"chain": {"family": "ip"}},
])
def test_malformed_objects_never_raise(bad: object) -> None:
    doc = {"nftables": [*_istio_items(), *FOREIGN["nftables"], bad]}
    live = parse_nft_json(json.dumps(doc))
    assert ("nat", "prerouting") in live.chains


def test_not_an_nft_document_is_one_error() -> None:
    for text in ("[1, 2]", '{"nftables": 5}', "{not json"):
        with pytest.raises(NftParseError):
            parse_nft_json(text)

