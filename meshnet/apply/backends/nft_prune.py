"""Remove the empty `ip`/`ip6` tables and base chains iptables-nft leaves behind.

iptables-nft creates a table and its base chains on first use and never deletes them, so after a
rollback or cleanup `nft list ruleset` would still show an empty `table ip nat`. An empty base
chain with an accept policy filters nothing, so deleting it restores the previous ruleset text
without changing what any packet sees. Only chains/tables this run touched are considered, and
only base chains with iptables' builtin names (a chain someone created with nft is not ours).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from meshnet.apply.netns import Netns, NetnsError
from meshnet.plan.model import BUILTIN_CHAINS, Family

_FAMILY = {4: "ip", 6: "ip6"}


def prune_empty(netns: Netns, family: Family, tables: dict[str, set[str] | None]) -> None:
    """tables: name -> base chains to consider (None = every base chain of that table).

    Best effort: it runs after the real work, and leftovers are inert (never a failure).
    """
    fam = _FAMILY[family]
    cmds: list[str] = []
    for table, chains in tables.items():
        try:
            cp = netns.run(["nft", "-j", "list", "table", fam, table], check=False, timeout=30)
        except NetnsError:
            return
        if cp.returncode != 0:
            continue  # table does not exist
        cmds.extend(_prune_cmds(fam, table, json.loads(cp.stdout).get("nftables", []), chains))
    if cmds:
        netns.run(["nft", "-f", "-"], input="\n".join(cmds) + "\n", check=False, timeout=30)


def _prune_cmds(fam: str, table: str, items: Iterable[Mapping[str, Mapping[str, object]]],
                only: set[str] | None) -> list[str]:
    chains: dict[str, Mapping[str, object]] = {}
    rule_count: dict[str, int] = {}
    other = False
    for item in items:
        if "chain" in item:
            chains[str(item["chain"]["name"])] = item["chain"]
        elif "rule" in item:
            name = str(item["rule"]["chain"])
            rule_count[name] = rule_count.get(name, 0) + 1
        elif "set" in item or "map" in item or "flowtable" in item or "obj" in item:
            other = True
    # Only iptables-nft's own base chains (builtin names): an empty chain someone made with nft stays.
    doomed = [name for name, c in chains.items()
              if "hook" in c and c.get("policy", "accept") == "accept" and not rule_count.get(name)
              and (name in only if only is not None else name in BUILTIN_CHAINS)]
    cmds = [f"delete chain {fam} {table} {name}" for name in doomed]
    if not other and len(doomed) == len(chains):
        return [f"delete table {fam} {table}"]
    return cmds
