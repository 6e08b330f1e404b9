"""Worker for the iptc backend: reads one family's ops (JSON on stdin) and writes them with libiptc.

Run it only through `iptc_backend.write_family`, which starts it inside the target namespace.
Per table: `autocommit=False` + `refresh()` (drop any stale cached handle) + one `commit()`, so
each table is replaced in one kernel call. Exit 1 with one line on stderr on any failure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from meshnet.plan.match_kinds import kind_of
from meshnet.plan.model import BUILTIN_CHAINS, TABLE_ORDER


def build_rule(iptc: Any, family: int, matches: list[list[Any]], target: list[str]) -> Any:
    """Each match is set by its kind's entry (meshnet.plan.match_kinds); core options first, so the
    protocol is known when a port match loads its module."""
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    parts = [(kind_of(kind), value, negated) for kind, value, negated in matches]
    proto = next((value for kind, value, _ in reversed(parts) if kind.iptc_attr == "protocol"), "tcp")
    ports = any(kind.port for kind, _, _ in parts)
    for kind, value, negated in sorted(parts, key=lambda part: not part[0].iptc_attr):
        kind.to_iptc(rule, value, negated, proto, ports)
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
