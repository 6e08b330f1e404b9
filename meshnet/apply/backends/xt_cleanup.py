"""Work out, from live iptables-save text, the restore payload that removes Istio's rules.

Config-independent, and only what is Istio's: every ISTIO_* chain, every rule jumping (or going)
into one, and the few rules Istio writes straight into builtin chains, in Istio's exact shape and
only beside Istio's own chains in that table: the TPROXY mark plumbing with the mark read from the
live ISTIO_* rules (or given by the spec), the paired `-i X -j RETURN` / `-o X -j RETURN` of an
excluded interface placed before Istio's jump, the kube-virt `-i X -j RETURN` that sits below
`-i X -j ISTIO_REDIRECT`. A look-alike with no Istio chains beside it, another mark, a comment or
any extra match stays. With `only` (rollback), exactly those rules are removed, only as many
times as they were added, so a user's identical rule that was there before survives.

Rules are deleted by position (`-D CHAIN N`, highest first), not by spec: a spec-based `-D` must
match the kernel entry byte for byte, which fails for rules another writer encoded differently
(python-iptables' ip6 rules), and positions also pick exactly one of two identical rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from meshnet.lite.records import dataclass, field
from meshnet.plan.model import Family, Match, Rule, Target
from meshnet.state.parse_save import parse_rule, split_words

ISTIO_PREFIX = "ISTIO_"
RuleKey = tuple[str, str, frozenset[Match], Target]  # Rule.key()
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


Block = tuple[list[str], list[tuple[str, Rule]]]


def _blocks(save_text: str) -> dict[str, Block]:
    """table -> (declared chains, [(rule text after '-A ', parsed rule)]), counters stripped."""
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
            words = split_words(line)
            if len(words) > 1:
                out[table][1].append((line[3:], parse_rule(table, words[1:], line)))
    return out


def istio_marks(save_texts: Iterable[str]) -> set[int]:
    """The TPROXY marks live Istio rules use: ISTIO_DIVERT's MARK, ISTIO_TPROXY's --tproxy-mark, and
    the `-m mark --mark M -j RETURN` of mangle ISTIO_INBOUND."""
    marks: set[int] = set()
    for text in save_texts:
        for _, rule in _blocks(text).get("mangle", ([], []))[1]:
            value = _rule_mark(rule)
            if value is not None:
                marks.add(value)
    return marks


def _rule_mark(rule: Rule) -> int | None:
    t = rule.target
    try:
        if rule.chain == "ISTIO_DIVERT" and t.name == "MARK" and t.args[:1] == ("--set-mark",):
            return int(t.args[1])
        if rule.chain == "ISTIO_TPROXY" and t.name == "TPROXY":
            return int(t.args[t.args.index("--tproxy-mark") + 1].split("/")[0], 0)
        if rule.chain == "ISTIO_INBOUND" and t.name == "RETURN":
            marks = [m for m in rule.matches if m.kind == "mark" and not m.negated and "/" not in m.value]
            return int(marks[0].value) if len(marks) == 1 else None
    except (ValueError, IndexError):
        return None
    return None


def plan_removal(save_text: str, family: Family, only: Counter[RuleKey] | None = None,
                 first: frozenset[RuleKey] = frozenset(), marks: Iterable[int] = (),
                 interfaces: Iterable[str] | None = None) -> Removal:
    """What to remove: everything Istio's, or (`only`) that many copies of those rules.

    `marks`: TPROXY marks known from elsewhere (the spec, the other family) besides the ones this
    text's ISTIO_* rules show. `interfaces`: the spec's excluded interfaces, when a spec is known
    (then only their RETURN pairs are Istio's; without one, the shape and place decide). With `only`,
    copies of keys in `first` are taken from the top of their chain (they were inserted at position
    1), the others from the bottom (they were appended).
    """
    removal = Removal()
    blocks = _blocks(save_text)
    known = {str(m) for m in (*marks, *istio_marks([save_text]))}
    for table, (chains, rules) in blocks.items():
        position: dict[str, int] = {}
        builtin: list[tuple[str, int, Rule]] = []
        for text, rule in rules:
            position[rule.chain] = position.get(rule.chain, 0) + 1
            if not rule.chain.startswith(ISTIO_PREFIX):
                builtin.append((text, position[rule.chain], rule))
        if only is None:
            has_istio = any(c.startswith(ISTIO_PREFIX) for c in chains)
            excluded = None if interfaces is None else frozenset(interfaces)
            doomed = _istio_builtin_rules(table, [r for _, _, r in builtin], known, excluded) if has_istio else set()
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
    return Counter(rule.key() for _, (_, rules) in _blocks(save_text).items()
                   for _, rule in rules if not rule.chain.startswith(ISTIO_PREFIX))


def _kinds(rule: Rule) -> dict[str, Match]:
    return {m.kind: m for m in rule.matches}


def _plain(rule: Rule, kinds: set[str]) -> dict[str, Match] | None:
    """The rule's matches by kind when it has exactly those kinds, once each (no opaque part,
    no comment, no duplicate); None otherwise."""
    k = _kinds(rule)
    return k if set(k) == kinds and len(rule.matches) == len(kinds) else None


def _istio_builtin_rules(table: str, rules: list[Rule], marks: set[str],
                         excluded: frozenset[str] | None = None) -> set[int]:
    """ids of builtin-chain rules in the exact shape (and, for TPROXY, with the mark) Istio writes there.

    The caller has checked that the table holds Istio chains.
    """
    doomed: set[int] = set()
    tcp = Match("proto", "tcp")
    tail: list[Rule] = []  # the TPROXY plumbing in mangle OUTPUT, an anchor for the excluded interfaces
    if table == "mangle":
        for r in rules:
            t = r.target
            if r.chain == "PREROUTING" and (k := _plain(r, {"proto", "mark"})) and tcp in r.matches \
                    and k["mark"].value in marks and not k["mark"].negated \
                    and t.name == "CONNMARK" and t.args == ("--save-mark",):
                doomed.add(id(r))
            elif r.chain == "OUTPUT" and (k := _plain(r, {"proto", "out", "mark"})) and tcp in r.matches \
                    and k["out"] == Match("out", "lo") and k["mark"].value in marks and not k["mark"].negated \
                    and t.name == "RETURN" and not t.args:
                doomed.add(id(r))
                tail.append(r)
            elif r.chain == "OUTPUT" and any(_plain(r, {"dst", "proto", "out", o}) for o in ("uid", "gid")) \
                    and tcp in r.matches and _kinds(r)["dst"].negated and _kinds(r)["out"] == Match("out", "lo") \
                    and t.name == "MARK" and t.args == ("--set-mark", OUTBOUND_MARK) and marks:
                doomed.add(id(r))
                tail.append(r)
            elif r.chain == "OUTPUT" and (k := _plain(r, {"proto", "connmark"})) and tcp in r.matches \
                    and k["connmark"].value in marks and not k["connmark"].negated \
                    and t.name == "CONNMARK" and t.args == ("--restore-mark",):
                doomed.add(id(r))
                tail.append(r)
    if table in ("nat", "mangle"):
        doomed |= _excluded_interfaces(table, rules, tail, excluded)
    return doomed


def _excluded_interfaces(table: str, rules: list[Rule], tail: list[Rule],
                         excluded: frozenset[str] | None = None) -> set[int]:
    """Istio appends `-i X -j RETURN` to PREROUTING and `-o X -j RETURN` to OUTPUT before any of its
    other rules there, so each must come before Istio's jump (or TPROXY plumbing) in its chain."""
    def plain_return(r: Rule, chain: str, kind: str) -> str | None:
        k = _plain(r, {kind})
        if r.chain == chain and k and not k[kind].negated and r.target.name == "RETURN" \
                and not r.target.args and not r.target.opaque and not r.target.goto:
            return k[kind].value
        return None

    def before_anchor(chain: str, anchors: list[Rule]) -> set[int]:
        """ids of the rules of `chain` above its first anchor (all of them if it has none)."""
        order = [r for r in rules if r.chain == chain]
        cut = next((i for i, r in enumerate(order) if any(r is a for a in anchors)), len(order))
        return {id(r) for r in order[:cut]}

    jumps = [r for r in rules if r.target.name.startswith(ISTIO_PREFIX)]
    pre_ok = before_anchor("PREROUTING", [r for r in jumps if r.chain == "PREROUTING"
                                          and r.target.name != "ISTIO_REDIRECT"])
    out_ok = before_anchor("OUTPUT", [r for r in jumps if r.chain == "OUTPUT"] + tail)
    ins = {v: r for r in rules if (v := plain_return(r, "PREROUTING", "in")) and id(r) in pre_ok}
    outs = {v: r for r in rules if (v := plain_return(r, "OUTPUT", "out")) and id(r) in out_ok}
    doomed: set[int] = set()
    for nic, r in ins.items():
        if nic in outs and (excluded is None or nic in excluded):
            doomed.update((id(r), id(outs[nic])))
    if table == "nat":  # kube-virt: `-I PREROUTING 1 -i X -j RETURN`, then `-I PREROUTING 1 -i X ... -j ISTIO_REDIRECT`
        seen_virt: set[str] = set()
        for r in (r for r in rules if r.chain == "PREROUTING"):
            if r.target.name == "ISTIO_REDIRECT":
                seen_virt |= {m.value for m in r.matches if m.kind == "in" and not m.negated}
            elif (virt_nic := plain_return(r, "PREROUTING", "in")) and virt_nic in seen_virt:
                doomed.add(id(r))
    return doomed
