"""Worker for the iptc backend: reads one family's ops (JSON on stdin) and writes them with libiptc.

Run it only through `iptc_backend.write_family`, which starts it inside the target namespace.
Per table: `autocommit=False` + `refresh()` (drop any stale cached handle) + one `commit()`, so
each table is replaced in one kernel call. Exit 1 with one line on stderr on any failure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from meshnet.plan.model import BUILTIN_CHAINS, TABLE_ORDER

_SIMPLE = {"proto": "protocol", "src": "src", "dst": "dst", "in": "in_interface", "out": "out_interface"}
_MODULE = {"dports": ("multiport", "dports"), "uid": ("owner", "uid_owner"), "gid": ("owner", "gid_owner"),
           "ctstate": ("conntrack", "ctstate"), "mark": ("mark", "mark"), "connmark": ("connmark", "mark")}


def _neg(value: str, negated: bool) -> str:
    return f"!{value}" if negated else value


def build_rule(iptc: Any, family: int, matches: list[list[Any]], target: list[str]) -> Any:
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    proto = "tcp"
    for kind, value, negated in matches:
        if kind in _SIMPLE:
            setattr(rule, _SIMPLE[kind], _neg(value, negated))
            if kind == "proto":
                proto = value
    for kind, value, negated in matches:
        if kind in ("dport", "sport"):
            m = rule.create_match(proto)
            setattr(m, kind, _neg(value, negated))
        elif kind in _MODULE:
            module, param = _MODULE[kind]
            m = rule.create_match(module)
            setattr(m, param, _neg(value, negated))
        elif kind == "module":  # a bare `-m tcp`: implied by a port match, if there is one
            if not any(k in ("dport", "sport") for k, _, _ in matches):
                rule.create_match(value)
        elif kind == "socket_exists":
            rule.create_match("owner").socket_exists = _neg("", negated)
        elif kind == "set":
            rule.create_match("set").match_set = [f"!{value.split()[0]}" if negated else value.split()[0],
                                                  *value.split()[1:]]
        elif kind not in _SIMPLE:
            raise ValueError(f"unsupported match {kind!r}")
    name, *args = target
    t = rule.create_target(name)
    i = 0
    while i < len(args):
        key = args[i].lstrip("-").replace("-", "_")
        if key == "to_port":
            key = "to_ports"
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            setattr(t, key, args[i + 1])
            i += 2
        else:
            setattr(t, key, "")
            i += 1
    return rule


def apply(payload: dict[str, Any]) -> None:
    import iptc  # the whole point of this process: imported after nsenter, never shared

    family = int(payload["family"])
    by_table: dict[str, list[dict[str, Any]]] = {}
    for op in payload["ops"]:
        by_table.setdefault(op["table"], []).append(op)
    for name in sorted(by_table, key=lambda t: TABLE_ORDER.index(t) if t in TABLE_ORDER else 99):
        table = (iptc.Table6 if family == 6 else iptc.Table)(name, autocommit=False)
        table.refresh()
        chains: dict[str, Any] = {}

        def chain(chain_name: str, table: Any = table, chains: dict[str, Any] = chains) -> Any:
            if chain_name not in chains:
                if chain_name in BUILTIN_CHAINS:
                    chains[chain_name] = iptc.Chain(table, chain_name)
                else:
                    chains[chain_name] = table.create_chain(chain_name)
            return chains[chain_name]

        for op in by_table[name]:  # declare every chain first: jumps need their target to exist
            chain(op["chain"])
            target = op["target"][0]
            if len(op["target"]) == 1 and target.startswith("ISTIO_"):
                chain(target)
        for op in by_table[name]:
            rule = build_rule(iptc, family, op["matches"], op["target"])
            if op["position"] is None:
                chain(op["chain"]).append_rule(rule)
            else:
                chain(op["chain"]).insert_rule(rule, int(op["position"]) - 1)
        table.commit()


def main() -> int:
    try:
        apply(json.load(sys.stdin))
    except Exception as exc:  # one line for the parent, which rolls back
        sys.stderr.write(f"iptc: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
