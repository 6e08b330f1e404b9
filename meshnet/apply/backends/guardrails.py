"""Istio's reconcile guardrails: `-t filter -I INPUT|FORWARD|OUTPUT 1 -p tcp|udp -j DROP` (6 rules).

Istio inserts them before cleaning and re-applying, so no packet escapes interception while the
rules are swapped, and removes them in a `defer`: a SIGKILL in between leaves a pod that drops all
TCP and UDP ("pod blackholed"). meshnet never leaves them behind (applier: the guardrails and the
swap are one restore per family), and detects and removes a leftover *complete set* in exactly
this shape, whoever left it. One `-p tcp -j DROP` alone is somebody's firewall, not a guardrail.

`find_guardrails(save_text)` / `guardrails_in(ruleset)` are the detection shared by cleanup,
reconcile and the status/doctor finding.
"""

from __future__ import annotations

from meshnet.plan.model import Match, RuleSet

CHAINS = ("INPUT", "FORWARD", "OUTPUT")
PROTOS = ("tcp", "udp")
SHAPES = tuple(f"-A {chain} -p {proto} -j DROP" for chain in CHAINS for proto in PROTOS)


def insert_text() -> str:
    """The filter block that inserts one set at the top (Istio's order and positions)."""
    lines = [f"-I {chain} 1 -p {proto} -j DROP" for chain in CHAINS for proto in PROTOS]
    return "*filter\n" + "\n".join(lines) + "\nCOMMIT\n"


def delete_lines(sets: int = 1) -> list[str]:
    """`-D` by rule spec deletes the first match: the copies at the top, i.e. ours."""
    return [f"-D {chain} -p {proto} -j DROP" for _ in range(sets) for chain in CHAINS for proto in PROTOS]


def _filter_rules(save_text: str) -> list[str]:
    out: list[str] = []
    table = ""
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and "] " in line:  # `-c` counters
            line = line.split("] ", 1)[1]
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "filter" and line.startswith("-A "):
            out.append(" ".join(line.split()))
    return out


def count_sets(save_text: str) -> int:
    """How many complete guardrail sets the filter table of this save output holds."""
    rules = _filter_rules(save_text)
    return min(rules.count(shape) for shape in SHAPES)


def find_guardrails(save_text: str) -> list[str]:
    """The leftover guardrail rules (every copy belonging to a complete set), as `-A` lines."""
    n = count_sets(save_text)
    return [shape for _ in range(n) for shape in SHAPES]


def removal_text(save_text: str) -> str:
    """Restore payload (--noflush) deleting every complete set found; '' when there is none."""
    n = count_sets(save_text)
    return "*filter\n" + "\n".join(delete_lines(n)) + "\nCOMMIT\n" if n else ""


def guardrails_in(ruleset: RuleSet) -> list[str]:
    """The same detection on parsed state (meshnet.state.parse_save.parse_save)."""
    counts = {}
    for chain in CHAINS:
        for proto in PROTOS:
            counts[(chain, proto)] = sum(
                1 for r in ruleset.rules("filter", chain)
                if r.matches == (Match("proto", proto),) and r.target.name == "DROP" and not r.target.args)
    n = min(counts.values())
    return [shape for _ in range(n) for shape in SHAPES]
