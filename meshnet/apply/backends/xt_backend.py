"""The iptables backends behind the seam (backends/base.py): iptables-nft, iptables-legacy, iptc.

One class, `XtablesBackend(name)`: read = one `*-save` per family the plan writes, compared with
Istio's rules; write = TPROXY routing, then both families in one detached spawn (iptc: its
workers), rolled back exactly on any failure; reconcile = one guardrailed swap restore per family
(backends/xt_swap.py); cleanup = every Istio trace in that variant, leftover guardrails included.
"""

from __future__ import annotations

from meshnet.apply.backends import IPTC, LEGACY, routing
from meshnet.apply.backends.base import Live, RoutingSteps, safely
from meshnet.apply.backends.xtables import TIMEOUT_SECONDS, Xtables, legacy_tables, strip_counters
from meshnet.apply.netns import Netns, NetnsError
from meshnet.errors import ApplyError
from meshnet.plan.model import BUILTIN_CHAINS, Family, IptablesPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.apply.backends.xt_cleanup import Removal
    from meshnet.spec.spec import Spec


class XtablesBackend(RoutingSteps):
    def __init__(self, name: str) -> None:
        self.name = name
        self.xt = Xtables("legacy" if name in (LEGACY, IPTC) else "nft")
        self._plan: tuple[Spec, IptablesPlan] | None = None

    def require(self) -> XtablesBackend:
        if not self.xt.available():
            raise ApplyError(f"{self.xt.binary(4, 'restore')} not found")
        return self

    def plan(self, spec: Spec) -> IptablesPlan:
        if self._plan is None or self._plan[0] is not spec:
            from meshnet.plan.istio_builder import build_iptables

            self._plan = (spec, build_iptables(spec))
        return self._plan[1]

    def fast_write(self, netns: Netns, spec: Spec) -> bool:
        plan = self.plan(spec)
        return self.name != IPTC and one_atomic_restore(plan) and bool(try_fresh_write(netns, plan, self.xt))

    def applied(self, netns: Netns, spec: Spec) -> str:
        return applied_message(netns, self.plan(spec), self.name)

    def read(self, netns: Netns, spec: Spec) -> Live:
        plan = self.plan(spec)
        texts = {fam: self.xt.save(netns, fam) for fam in plan.families()}
        per = xt_by_family(plan, texts)
        return Live(any(r for r, _ in per.values()), [line for _, lines in per.values() for line in lines],
                    (plan, texts))

    def write(self, netns: Netns, spec: Spec, live: Live) -> str:
        plan, texts = live.before
        _write_xtables(netns, spec, plan, self.xt, self.name, texts, self)
        drop_leftover_guardrails(netns, self.xt, texts)
        return applied_message(netns, plan, self.name)

    def repair(self, netns: Netns, spec: Spec, live: Live) -> list[str]:
        return drop_leftover_guardrails(netns, self.xt, live.before[1])

    def reconcile(self, netns: Netns, spec: Spec, live: Live) -> str:
        plan, texts = live.before
        _reconcile_xtables(netns, spec, plan, self.xt, self.name, texts, self)
        return f"reconciled {netns.label}: {len(live.drift)} difference(s) replaced by the spec"

    def cleanup(self, netns: Netns, marks: set[int] | None = None, spec: Spec | None = None) -> list[str]:
        """Every Istio trace in this variant, both families (routing is the caller's). `marks`
        collects the TPROXY marks the live Istio rules used (so that routing cleanup finds its own);
        a `spec` narrows the excluded-interface pairs to its own."""
        from meshnet.apply.backends.xt_cleanup import istio_marks, plan_removal

        xt = self.xt
        marks = set() if marks is None else marks
        removed: list[str] = []
        if not xt.available():
            return removed
        for fam in (4, 6):
            if xt.variant == "legacy" and not legacy_tables(netns, fam):
                continue
            text = xt.save(netns, fam)
            marks |= istio_marks([text])
            unblocked = drop_leftover_guardrails(netns, xt, {fam: text})
            if unblocked:
                removed += unblocked
                if xt.variant == "nft":
                    from meshnet.apply.backends.nft_prune import prune_empty

                    prune_empty(netns, fam, {"filter": {"INPUT", "FORWARD", "OUTPUT"}})
                text = xt.save(netns, fam)
            removal = plan_removal(text, fam, marks=marks,
                                   interfaces=spec.exclude_interfaces if spec is not None else None)
            if removal.empty:
                continue
            remove(netns, xt, fam, removal, prune={t: None for t in removal.tables()})
            tool = xt.binary(fam, "")
            removed += [f"{tool} -t {t} {line}" for t in removal.tables() for line in removal.lines(t)]
        return removed


def applied_message(netns: Netns, plan: IptablesPlan, backend: str) -> str:
    return f"applied {sum(len(plan.ops(f)) for f in plan.families())} rules with {backend} in {netns.label}"


def xt_drift(plan: IptablesPlan, live_text: dict[Family, str]) -> tuple[bool, list[str]]:
    """(residue, drift lines) per Istio's rules, over the families the plan writes."""
    per = xt_by_family(plan, live_text)
    return any(r for r, _ in per.values()), [line for _, lines in per.values() for line in lines]


def xt_by_family(plan: IptablesPlan, live_text: dict[Family, str]) -> dict[Family, tuple[bool, list[str]]]:
    """family -> (Istio chains present, drift lines)."""
    if not any("ISTIO_" in text for text in live_text.values()):
        return {fam: (False, []) for fam in live_text}  # the usual fresh pod: nothing to parse or compare
    from meshnet.state.compare import diff_rulesets
    from meshnet.state.parse_save import parse_save

    out: dict[Family, tuple[bool, list[str]]] = {}
    for fam, text in live_text.items():
        live = parse_save(strip_counters(text), fam)
        out[fam] = (bool(live.istio_chains()), diff_rulesets(plan.ruleset(fam), live).lines())
    return out


def drop_leftover_guardrails(netns: Netns, xt: Xtables, live_text: dict[Family, str]) -> list[str]:
    """Remove complete sets of Istio's DROP guardrails an interrupted (Istio) reconcile left."""
    from meshnet.apply.backends import guardrails

    removed = []
    for fam, text in live_text.items():
        if "DROP" not in text:
            continue
        payload = guardrails.removal_text(strip_counters(text))
        if payload:
            xt.restore(netns, fam, payload)
            removed += [f"{xt.binary(fam, '')} -t filter -D {line[3:]}" for line in guardrails.find_guardrails(
                strip_counters(text))]
    return removed



def one_atomic_restore(plan: IptablesPlan) -> bool:
    """One family, one table (the default REDIRECT pod: IPv4 nat only) and so no routing to add.

    iptables-restore commits table by table, so only such a payload is all-or-nothing.
    """
    return plan.families() == (4,) and len({op.rule.table for op in plan.v4}) == 1


# Exit 97 when the namespace has any legacy table, else become the restore: backend detection and
# the write of a fresh pod in one spawn (POSIX sh builtins only; /proc/net is the namespace's own).
_NO_LEGACY_THEN = ('for f in /proc/net/ip_tables_names /proc/net/ip6_tables_names; do '
                   'read -r t 2>/dev/null < "$f" && exit 97; done; exec "$@"')


def try_fresh_write(netns: Netns, plan: IptablesPlan, xt: Xtables, *, unless_legacy: bool = False) -> bool | None:
    """Write without reading first: on a fresh pod that saves a whole `*-save` run.

    Only for plans one restore commits all-or-nothing (see one_atomic_restore). The payload
    declares every ISTIO chain with `-N`, so it fails, and commits nothing, whenever any of them
    exists already. True: written. False: the restore failed; the normal read-compare path then
    finds the residue (no-op or drift) or reports the real error. None: nothing was learnt (with
    `unless_legacy`: legacy tables exist, so Istio's full detection must choose the backend).
    """
    from meshnet.plan.render_restore import render_family

    argv = xt.restore_argv(4)
    if unless_legacy:
        argv = ["sh", "-c", _NO_LEGACY_THEN, "sh", *argv]
    try:
        code = netns.run(argv, input=render_family(plan, 4), timeout=TIMEOUT_SECONDS, check=False,
                         env=xt.lock_env(netns)).returncode
    except NetnsError:
        return None
    if code == 0:
        return True
    return None if unless_legacy and code == 97 else False



def _write_xtables(netns: Netns, spec: Spec, plan: IptablesPlan, xt: Xtables, name: str,
                   before: dict[Family, str], steps: RoutingSteps) -> None:
    """Routing, then v4, then v6; on any failure (even an interrupt) undo all of it.

    `before` is each family's save output from just before: rollback removes only the rules that
    are there now and were not then.
    """
    from meshnet.plan.render_restore import render_family

    changes = routing.Changes()
    started: list[Family] = []
    try:
        changes = steps.ensure_routing(netns, spec)
        started.extend(plan.families())
        if name == IPTC:
            from meshnet.apply.backends.iptc_backend import write_families

            write_families(netns, {fam: plan.ops(fam) for fam in plan.families()})
        else:  # both families in one detached spawn: no kill of meshnet can leave one without the other
            xt.restore_families(netns, {fam: render_family(plan, fam) for fam in plan.families()})
    except BaseException as exc:
        problems = _rollback_xtables(netns, xt, plan, started, before)
        problems += safely(lambda: routing.remove(netns, changes))
        if problems and isinstance(exc, ApplyError):
            raise ApplyError(f"{exc}; rollback incomplete ({'; '.join(problems)}): run meshnet cleanup") from None
        raise



def _rollback_xtables(netns: Netns, xt: Xtables, plan: IptablesPlan, families: list[Family],
                      before: dict[Family, str]) -> list[str]:
    """Remove what this run committed (the namespace had no Istio chains before it)."""
    from collections import Counter

    from meshnet.apply.backends.xt_cleanup import builtin_keys, plan_removal

    problems: list[str] = []
    for fam in families:
        def undo(fam: Family = fam) -> None:
            ops = plan.ops(fam)
            ours = Counter(op.rule.key() for op in ops if op.rule.chain in BUILTIN_CHAINS)
            inserted = frozenset(op.rule.key() for op in ops if op.position is not None)
            now = xt.save(netns, fam)
            added = (builtin_keys(now) - builtin_keys(before.get(fam, ""))) & ours
            rs = plan.ruleset(fam)
            remove(netns, xt, fam, plan_removal(now, fam, only=added, first=inserted),
                    prune={t: set(rs.chain_names(t)) & BUILTIN_CHAINS for t in rs.tables})
        problems += safely(undo)
    return problems


def remove(netns: Netns, xt: Xtables, fam: Family, removal: Removal,
            prune: dict[str, set[str] | None]) -> None:
    if not removal.empty:
        xt.restore(netns, fam, removal.restore_text())
    if xt.variant == "nft" and prune:
        from meshnet.apply.backends.nft_prune import prune_empty

        prune_empty(netns, fam, prune)


def _guardrail_text(op: str) -> str:
    """Istio's guardrail set as its own restore (`-I` in, `-D` out), for callers that still need one
    (ambient mode). The sidecar reconcile never uses it: see backends/xt_swap.py."""
    from meshnet.apply.backends import guardrails

    if op == "-I":
        return guardrails.insert_text()
    return "*filter\n" + "\n".join(guardrails.delete_lines(1)) + "\nCOMMIT\n"


def _reconcile_xtables(netns: Netns, spec: Spec, plan: IptablesPlan, xt: Xtables, name: str,
                       before: dict[Family, str], steps: RoutingSteps) -> None:
    """Istio's reconcile (guardrails, clean, re-apply, guardrails off) as ONE restore per family.

    See backends/xt_swap.py: nothing a kill of meshnet can interrupt leaves the guardrails in. The
    new TPROXY routing goes in first and the stale one out last, so the rules in force always have
    theirs. iptc reconciles through iptables-legacy-restore too: python-iptables cannot commit
    the guardrails and the swap as one payload. If a restore fails, the tables are put back
    exactly as they were saved (with counters) and any guardrail it committed is removed.
    """
    from meshnet.apply.backends import guardrails
    from meshnet.apply.backends.xt_cleanup import istio_marks, plan_removal
    from meshnet.apply.backends.xt_swap import swap_payload
    from meshnet.plan.render_restore import render_family

    changes = steps.ensure_routing(netns, spec)
    marks = istio_marks(before.values())
    started: list[Family] = []
    try:
        payloads = {}
        for fam in plan.families():
            text = strip_counters(before[fam])
            payloads[fam] = swap_payload(plan_removal(text, fam, marks=marks), render_family(plan, fam),
                                         guardrails.count_sets(text))
        started.extend(payloads)
        xt.restore_families(netns, payloads)
    except BaseException:
        for fam in started:
            safely(lambda fam=fam: _undo_swap(netns, xt, plan, fam, before[fam]))
        safely(lambda: routing.remove(netns, changes))
        raise
    keep = (spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6) if spec.tproxy and spec.inbound_enabled \
        else (0, 0, False)
    routing.remove_all_tproxy(netns, marks, keep=keep)  # stale Istio routing only, after the swap
    if xt.variant == "nft" and not any("*filter" in text for text in before.values()):
        from meshnet.apply.backends.nft_prune import prune_empty

        for fam in plan.families():  # the guardrails made iptables-nft create the filter table
            prune_empty(netns, fam, {"filter": set(guardrails.CHAINS)})


def _undo_swap(netns: Netns, xt: Xtables, plan: IptablesPlan, fam: Family, saved: str) -> None:
    from meshnet.apply.backends import guardrails
    from meshnet.state.parse_save import parse_save

    had = set(parse_save(strip_counters(saved), fam).tables)
    # A table that did not exist before held nothing: flushing it takes out what the swap wrote.
    empty = "".join(f"*{t}\nCOMMIT\n" for t in sorted(set(plan.ruleset(fam).tables) - had - {"filter"}))
    _restore_tables(netns, xt, fam, saved + "\n" + empty, (had | set(plan.ruleset(fam).tables)) - {"filter"}
                    | ({"filter"} if "filter" in had else set()))
    extra = guardrails.count_sets(strip_counters(xt.save(netns, fam))) - guardrails.count_sets(strip_counters(saved))
    if extra > 0:
        xt.restore(netns, fam, "*filter\n" + "\n".join(guardrails.delete_lines(extra)) + "\nCOMMIT\n")
    if xt.variant == "nft" and "*filter" not in saved:
        from meshnet.apply.backends.nft_prune import prune_empty

        prune_empty(netns, fam, {"filter": set(guardrails.CHAINS)})


def _restore_tables(netns: Netns, xt: Xtables, fam: Family, saved: str, tables: set[str]) -> None:
    """Put whole tables back from save text (no --noflush: each listed table is replaced)."""
    keep: list[str] = []
    current = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        if current in tables and not line.startswith("#"):
            keep.append(line)
        if line == "COMMIT":
            current = ""
    if keep:
        xt.restore(netns, fam, "\n".join(keep) + "\n", noflush=False, counters=True)


