"""The reconcile of one iptables family as ONE restore: guardrails, the swap, guardrails off.

Istio inserts its DROP guardrails, cleans, re-applies and removes them, each a separate command:
SIGKILL in between leaves a pod that drops every TCP and UDP packet (issue 10, defect 1). Here
all of it is a single iptables-restore payload:

    *filter   insert the 6 guardrails                                 COMMIT
    *mangle   delete Istio's old rules/chains, write the new ones        COMMIT
    *nat      (same)                                                   COMMIT
    *raw      (same)                                                   COMMIT
    *filter   delete the guardrails (+ leftovers of an earlier run), old/new filter rules  COMMIT

The kernel commits table by table, so traffic still meets the guardrails while the tables are
swapped (Istio's guarantee), but the payload is in the pipe before the restore starts
(spawn.run) and the restore runs in its own session: killing meshnet, or its process group,
cannot stop it between the first and the last COMMIT. Old-rule positions come from the save
output read under the writer lock, so nobody has moved them.
"""

from __future__ import annotations

from meshnet.apply.backends import guardrails
from meshnet.apply.backends.xt_cleanup import Removal
from meshnet.plan.model import TABLE_ORDER


def table_blocks(restore_text: str) -> dict[str, list[str]]:
    """`*table ... COMMIT` blocks of restore text -> table -> body lines."""
    out: dict[str, list[str]] = {}
    table = ""
    for raw in restore_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            out.setdefault(table, [])
        elif line == "COMMIT":
            table = ""
        elif table:
            out[table].append(line)
    return out


def removal_lines(removal: Removal, table: str) -> list[str]:
    # Highest position first, so earlier deletions do not shift later ones.
    lines = [f"-D {chain} {pos}" for chain, pos, _ in sorted(removal.deletes.get(table, []),
                                                               key=lambda d: (d[0], -d[1]))]
    chains = removal.chains.get(table, [])
    return lines + [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]


def swap_payload(removal: Removal, new_text: str, leftover_sets: int = 0) -> str:
    """One family's reconcile payload (see the module doc). `new_text` is render_family output."""
    new = table_blocks(new_text)
    tables = [t for t in TABLE_ORDER if t != "filter" and (t in new or removal_lines(removal, t))]
    tables += sorted(t for t in {*new, *removal.tables()} if t not in TABLE_ORDER)
    out = [guardrails.insert_text().rstrip("\n")]
    for table in tables:
        out += [f"*{table}", *removal_lines(removal, table), *new.get(table, []), "COMMIT"]
    # Ours were inserted at the top, so `-D` by spec takes them first; then the positions read
    # before are valid again for the filter table's own Istio rules; then an earlier run's leftovers.
    out += ["*filter", *guardrails.delete_lines(1), *removal_lines(removal, "filter"),
            *guardrails.delete_lines(leftover_sets), *new.get("filter", []), "COMMIT"]
    return "\n".join(out) + "\n"
