"""Work out, from live iptables-save text, the restore payload that removes Istio's rules.

Config-independent: every ISTIO_* chain, every rule jumping into one, and the few rules Istio
writes straight into builtin chains, recognised by shape (TPROXY mark plumbing, the paired
`-i X -j RETURN` / `-o X -j RETURN` of an excluded interface, the kube-virt `-i X -j RETURN` that
sits next to `-i X -j ISTIO_REDIRECT`). With `only` (rollback), exactly those rules are removed,
only as many times as they were added, so a user's identical rule that was there before survives.

Rules are deleted by position (`-D CHAIN N`, highest first), not by spec: a spec-based `-D` must
match the kernel entry byte for byte, which fails for rules another writer encoded differently
(python-iptables' ip6 rules), and positions also pick exactly one of two identical rules.
"""

from __future__ import annotations

import shlex
from collections import Counter

from meshnet.model import Family, Match, Rule
from meshnet.parse.iptables_save import parse_rule
from meshnet.records import dataclass, field

ISTIO_PREFIX = "ISTIO_"
RuleKey = tuple[object, ...]
OUTBOUND_MARK = "1338"


@dataclass
class Removal:
    """Per table: builtin-chain rules to delete (chain, 1-based position, text), ISTIO chains to drop."""

    deletes: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.deletes.values()) and not any(self.chains.values())

    def tables(self) -> list[str]:
        return [t for t in {**self.deletes, **self.chains} if self.deletes.get(t) or self.chains.get(t)]

    def lines(self, table: str) -> list[str]:
        """Human-readable: what is removed from this table."""
        return [f"-D {text}" for _, _, text in self.deletes.get(table, [])] + \
            [f"-X {c}" for c in self.chains.get(table, [])]

    def restore_text(self) -> str:
        out: list[str] = []
        for table in self.tables():
            out.append(f"*{table}")
            # Highest position first, so earlier deletions do not shift later ones.
            for chain, pos, _ in sorted(self.deletes.get(table, []), key=lambda d: (d[0], -d[1])):
                out.append(f"-D {chain} {pos}")
            out.extend(f"-F {c}" for c in self.chains.get(table, []))
            out.extend(f"-X {c}" for c in self.chains.get(table, []))
            out.append("COMMIT")
        return "\n".join(out) + "\n" if out else ""


Block = tuple[list[str], list[tuple[str, list[str]]]]


def _blocks(save_text: str) -> dict[str, Block]:
    """table -> (declared chains, [(rule text after '-A ', tokens)]), counters stripped."""
    out: dict[str, Block] = {}
    table = ""
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and "]" in line:  # `iptables-save -c` counter prefix
            line = line.split("]", 1)[1].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            out.setdefault(table, ([], []))
        elif line.startswith(":") and table:
            out[table][0].append(line[1:].split(" ", 1)[0])
        elif line.startswith("-A ") and table:
            out[table][1].append((line[3:], shlex.split(line)[1:]))
    return out


def plan_removal(save_text: str, family: Family, only: Counter[RuleKey] | None = None,
                 first: frozenset[RuleKey] = frozenset()) -> Removal:
    """What to remove: everything Istio-shaped, or (`only`) that many copies of those rules.

    With `only`, copies of keys in `first` are taken from the top of their chain (they were
    inserted at position 1), the others from the bottom (they were appended).
    """
    removal = Removal()
    for table, (chains, rules) in _blocks(save_text).items():
        position: dict[str, int] = {}
        builtin: list[tuple[str, int, Rule]] = []
        for text, tokens in rules:
            rule = parse_rule(table, tokens)
            position[rule.chain] = position.get(rule.chain, 0) + 1
            if not rule.chain.startswith(ISTIO_PREFIX):
                builtin.append((text, position[rule.chain], rule))
        if only is None:
            doomed = _istio_builtin_rules(table, [r for _, _, r in builtin])
            chosen = [(t, p, r) for t, p, r in builtin if r.target.name.startswith(ISTIO_PREFIX) or id(r) in doomed]
        else:
            left = Counter(only)
            chosen = []
            for t, p, r in builtin:
                if r.key() in first and left[r.key()] > 0:
                    left[r.key()] -= 1
                    chosen.append((t, p, r))
            for t, p, r in reversed(builtin):
                if r.key() not in first and left[r.key()] > 0:
                    left[r.key()] -= 1
                    chosen.append((t, p, r))
        removal.deletes[table] = [(r.chain, p, t) for t, p, r in chosen]
        # Rollback runs only where no ISTIO chain existed before: every one found is ours.
        removal.chains[table] = [c for c in chains if c.startswith(ISTIO_PREFIX)]
    return removal


def builtin_keys(save_text: str) -> Counter[RuleKey]:
    """How many times each rule appears in builtin chains (to tell ours from a user's twin)."""
    return Counter(parse_rule(table, tokens).key() for table, (_, rules) in _blocks(save_text).items()
                   for _, tokens in rules if not tokens[0].startswith(ISTIO_PREFIX))


def _kinds(rule: Rule) -> dict[str, Match]:
    return {m.kind: m for m in rule.matches}


def _istio_builtin_rules(table: str, rules: list[Rule]) -> set[int]:
    """ids of builtin-chain rules that have the exact shape of something Istio writes there."""
    doomed: set[int] = set()
    tcp = Match("proto", "tcp")
    if table == "mangle":
        for r in rules:
            k, t = _kinds(r), r.target
            if r.chain == "PREROUTING" and set(k) == {"proto", "mark"} and tcp in r.matches \
                    and t.name == "CONNMARK" and t.args == ("--save-mark",):
                doomed.add(id(r))
            elif r.chain == "OUTPUT" and set(k) == {"proto", "out", "mark"} and tcp in r.matches \
                    and k["out"].value == "lo" and t.name == "RETURN":
                doomed.add(id(r))
            elif r.chain == "OUTPUT" and set(k) in ({"dst", "proto", "out", "uid"}, {"dst", "proto", "out", "gid"}) \
                    and k["dst"].negated and k["out"].value == "lo" \
                    and t.name == "MARK" and t.args == ("--set-mark", OUTBOUND_MARK):
                doomed.add(id(r))
            elif r.chain == "OUTPUT" and set(k) == {"proto", "connmark"} and tcp in r.matches \
                    and t.name == "CONNMARK" and t.args == ("--restore-mark",):
                doomed.add(id(r))
    if table in ("nat", "mangle"):
        def plain_return(r: Rule, chain: str, kind: str) -> str | None:
            k = _kinds(r)
            if r.chain == chain and set(k) == {kind} and not k[kind].negated and r.target.name == "RETURN" \
                    and not r.target.args:
                return k[kind].value
            return None

        ins = {v: r for r in rules if (v := plain_return(r, "PREROUTING", "in"))}
        outs = {v: r for r in rules if (v := plain_return(r, "OUTPUT", "out"))}
        virt = {m.value for r in rules if r.chain == "PREROUTING" and r.target.name == "ISTIO_REDIRECT"
                for m in r.matches if m.kind == "in"}
        for nic, r in ins.items():
            if nic in outs:
                doomed.update((id(r), id(outs[nic])))
            elif table == "nat" and nic in virt:
                doomed.add(id(r))
    return doomed
