"""Program a pod's network namespace from a Spec: atomic, idempotent, reversible.

Flow of `apply_spec`: pick the backend (Istio's detection, without side effects), read the live
state once, then

* no Istio state           -> write: TPROXY routing first, then one restore per family (or one nft
                              transaction); any failure removes exactly what this run added;
* same state as the spec   -> no-op (`changed=False`);
* different state          -> ApplyError naming the drift, unless `reconcile` (clean and re-apply
                              behind Istio's DROP guardrails; nftables swaps tables in one transaction).

Nothing here runs in the caller's thread namespace: binaries go through `nsenter` (Netns.run),
netlink through pyroute2 bound to the namespace.
"""

from __future__ import annotations

from meshnet.backends import BACKENDS, IPTC, LEGACY, NFT, NFTABLES, nslock, routing
from meshnet.backends.xtables import TIMEOUT_SECONDS, Xtables, legacy_tables, strip_counters
from meshnet.errors import ApplyError, UsageError
from meshnet.model import BUILTIN_CHAINS, Family, IptablesPlan
from meshnet.netns import Netns, NetnsError, which
from meshnet.records import dataclass, field
from meshnet.spec import Spec

TYPE_CHECKING = False  # `typing` costs ~4 ms at start-up; only type checkers need it
if TYPE_CHECKING:
    from typing import Any

    from meshnet.backends.xt_cleanup import Removal

__all__ = ["ApplyResult", "CleanupResult", "Status", "apply_spec", "cleanup", "detect_backend", "prepare",
           "spec_for_netns", "status"]

@dataclass(frozen=True)
class ApplyResult:
    backend: str  # "iptables-legacy" | "iptables-nft" | "nftables" | "iptc"
    changed: bool  # False when the same spec was already applied (no-op)
    message: str


@dataclass(frozen=True)
class CleanupResult:
    backends: tuple[str, ...]  # backends that held Istio state and were cleaned
    removed: tuple[str, ...]  # one line per thing removed
    message: str

    @property
    def changed(self) -> bool:
        return bool(self.removed)


@dataclass(frozen=True)
class Status:
    backends: tuple[str, ...]  # backends holding Istio rules
    drift: tuple[str, ...]  # empty = matches the spec (or no spec given)
    tproxy_routing: bool
    passthrough_v6: bool
    spec_checked: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def backend(self) -> str:
        return self.backends[0] if len(self.backends) == 1 else ",".join(self.backends)

    def to_dict(self) -> dict[str, Any]:
        return {"backends": list(self.backends), "drift": list(self.drift), "in_sync": not self.drift,
                "spec_checked": self.spec_checked, "tproxy_routing": self.tproxy_routing,
                "passthrough_v6": self.passthrough_v6, "notes": list(self.notes)}


# ------------------------------------------------------------------------------------ detection
def detect_backend(netns: Netns, force: str = "") -> str:
    """Istio's choice of iptables variant, without side effects.

    `force` is FORCE_IPTABLES_BINARY (legacy|nft). Otherwise legacy only when it already holds
    rules (its tables are read from /proc first: a legacy read of a missing table would create it),
    else nft, else legacy if that is all there is.
    """
    legacy, nft = Xtables("legacy"), Xtables("nft")
    if force:
        chosen = {"legacy": legacy, "nft": nft}.get(force)
        if chosen is None:
            raise UsageError(f"invalid force-iptables-binary {force!r}: expected legacy or nft")
        if not chosen.available():
            raise ApplyError(f"{chosen.binary(4, 'restore')} not found (forced {force})")
        return chosen.backend
    if legacy.available() and _legacy_holds_rules(netns):
        return LEGACY
    if nft.available():
        return NFT
    if legacy.available():
        return LEGACY
    raise ApplyError("neither iptables-nft-restore nor iptables-legacy-restore is installed")


def _legacy_holds_rules(netns: Netns) -> bool:
    legacy = Xtables("legacy")
    for fam in (4, 6):
        if not legacy_tables(netns, fam):
            continue
        for line in legacy.save(netns, fam).splitlines():
            body = line.split("]", 1)[1].strip() if line.startswith("[") else line
            if body.startswith("-A ") or (body.startswith(":") and " - " in body):
                return True
    return False


def _resolve(netns: Netns, backend: str) -> str:
    if backend == "auto":
        return detect_backend(netns)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: expected auto, {', '.join(BACKENDS)}")
    return backend


DETECTION_FILES = ("fib_trie", "if_inet6", "ip_tables_names", "ip6_tables_names")


def prepare(netns: Netns, spec: Spec, backend: str = "auto", force: str = "") -> tuple[Spec, str]:
    """IPv6 (from the pod's addresses) and the backend, from one snapshot of the pod's /proc/net.

    One `nsenter grep` instead of four setns reads (and no ctypes import): the detection half
    of a pod start. The snapshot ends before anything is written.
    """
    with netns.prefetch_proc_net(DETECTION_FILES):
        spec = spec_for_netns(spec, netns)
        chosen = detect_backend(netns, force) if backend == "auto" else backend
    return spec, chosen


def spec_for_netns(spec: Spec, netns: Netns) -> Spec:
    """Fill `enable_ipv6` the way Istio does, from the pod's own addresses."""
    from meshnet.addresses import ipv6_enabled

    return spec.with_changes(enable_ipv6=ipv6_enabled(netns, spec.dual_stack))


# ------------------------------------------------------------------------------------ apply
def apply_spec(netns: Netns, spec: Spec, *, backend: str = "auto", reconcile: bool = False,
               force: bool = False) -> ApplyResult:
    """Under the namespace's writer lock: a concurrent writer of the same spec finds it applied
    (no-op), one of another spec finds drift (error, or reconcile when asked)."""
    with nslock.locked(netns):
        return _apply_locked(netns, spec, backend, reconcile, force)


def _apply_locked(netns: Netns, spec: Spec, backend: str, reconcile: bool, force: bool) -> ApplyResult:
    if backend == "auto":
        from meshnet.istio_builder import build_iptables

        plan, nft = build_iptables(spec), Xtables("nft")
        if _one_atomic_restore(plan) and nft.available():
            written = _try_fresh_write(netns, plan, nft, unless_legacy=True)
            if written:
                return _applied(netns, plan, NFT)
            if written is False:  # no legacy table, so Istio's choice is iptables-nft: its write was tried
                return _apply_xtables(netns, spec, NFT, reconcile, force, fresh_tried=True)
    name = _resolve(netns, backend)
    if name == NFTABLES:
        return _apply_nft(netns, spec, reconcile, force)
    return _apply_xtables(netns, spec, name, reconcile, force)


def _xt_for(name: str) -> Xtables:
    xt = Xtables("legacy" if name in (LEGACY, IPTC) else "nft")
    if not xt.available():
        raise ApplyError(f"{xt.binary(4, 'restore')} not found")
    return xt


def _xt_drift(plan: IptablesPlan, live_text: dict[Family, str]) -> tuple[bool, list[str]]:
    """(residue, drift lines) per Istio's rules, over the families the plan writes."""
    per = _xt_by_family(plan, live_text)
    return any(r for r, _ in per.values()), [line for _, lines in per.values() for line in lines]


def _xt_by_family(plan: IptablesPlan, live_text: dict[Family, str]) -> dict[Family, tuple[bool, list[str]]]:
    """family -> (Istio chains present, drift lines)."""
    if not any("ISTIO_" in text for text in live_text.values()):
        return {fam: (False, []) for fam in live_text}  # the usual fresh pod: nothing to parse or compare
    from meshnet.compare import diff_rulesets
    from meshnet.parse.iptables_save import parse_save

    out: dict[Family, tuple[bool, list[str]]] = {}
    for fam, text in live_text.items():
        live = parse_save(strip_counters(text), fam)
        out[fam] = (bool(live.istio_chains()), diff_rulesets(plan.ruleset(fam), live).lines())
    return out


def _drop_leftover_guardrails(netns: Netns, xt: Xtables, live_text: dict[Family, str]) -> list[str]:
    """Remove complete sets of Istio's DROP guardrails an interrupted (Istio) reconcile left."""
    from meshnet.backends import guardrails

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


def _apply_xtables(netns: Netns, spec: Spec, name: str, reconcile: bool, force: bool,
                   fresh_tried: bool = False) -> ApplyResult:
    from meshnet.istio_builder import build_iptables

    xt = _xt_for(name)
    plan = build_iptables(spec)
    if not fresh_tried and name != IPTC and _one_atomic_restore(plan) and _try_fresh_write(netns, plan, xt):
        return _applied(netns, plan, name)
    live_text = {fam: xt.save(netns, fam) for fam in plan.families()}
    per = _xt_by_family(plan, live_text)
    residue = any(r for r, _ in per.values())
    drift = [line for _, lines in per.values() for line in lines]
    if not residue:
        _write_xtables(netns, spec, plan, xt, name, live_text)
        _drop_leftover_guardrails(netns, xt, live_text)
        return _applied(netns, plan, name)
    if not drift and not force:
        unblocked = _drop_leftover_guardrails(netns, xt, live_text)
        return _already_applied(netns, spec, name, unblocked)
    if not reconcile:
        raise _drift_error(netns, name, drift, force)
    _reconcile_xtables(netns, spec, plan, xt, name, live_text)
    return ApplyResult(name, True, f"reconciled {netns.label}: {len(drift)} difference(s) replaced by the spec")


def _one_atomic_restore(plan: IptablesPlan) -> bool:
    """One family, one table (the default REDIRECT pod: IPv4 nat only) and so no routing to add.

    iptables-restore commits table by table, so only such a payload is all-or-nothing.
    """
    return plan.families() == (4,) and len({op.rule.table for op in plan.v4}) == 1


# Exit 97 when the namespace has any legacy table, else become the restore: backend detection and
# the write of a fresh pod in one spawn (POSIX sh builtins only; /proc/net is the namespace's own).
_NO_LEGACY_THEN = ('for f in /proc/net/ip_tables_names /proc/net/ip6_tables_names; do '
                   'read -r t 2>/dev/null < "$f" && exit 97; done; exec "$@"')


def _try_fresh_write(netns: Netns, plan: IptablesPlan, xt: Xtables, *, unless_legacy: bool = False) -> bool | None:
    """Write without reading first: on a fresh pod that saves a whole `*-save` run.

    Only for plans one restore commits all-or-nothing (see _one_atomic_restore). The payload
    declares every ISTIO chain with `-N`, so it fails, and commits nothing, whenever any of them
    exists already. True: written. False: the restore failed; the normal read-compare path then
    finds the residue (no-op or drift) or reports the real error. None: nothing was learnt (with
    `unless_legacy`: legacy tables exist, so Istio's full detection must choose the backend).
    """
    from meshnet.render.restore import render_family

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


def _applied(netns: Netns, plan: IptablesPlan, backend: str) -> ApplyResult:
    return ApplyResult(backend, True, f"applied {_count(plan)} rules with {backend} in {netns.label}")


def _already_applied(netns: Netns, spec: Spec, backend: str, unblocked: list[str] | None = None) -> ApplyResult:
    """The rules match the spec: only TPROXY routing / ::6 may need restoring (and stale routing going)."""
    changes = _ensure_routing(netns, spec)
    stale = _remove_stale_routing(netns, spec)
    what = "; restored missing routing" if not changes.empty else ""
    what += "; removed stale TPROXY routing" if stale else ""
    what += "; removed leftover DROP guardrails" if unblocked else ""
    changed = bool(not changes.empty or stale or unblocked)
    return ApplyResult(backend, changed, f"already applied in {netns.label}: {'repaired' if changed else 'no change'}"
                       f"{what}")


def _remove_stale_routing(netns: Netns, spec: Spec) -> int:
    """The spec's own TPROXY routing when the spec does not use TPROXY (left by a killed reconcile)."""
    if spec.tproxy and spec.inbound_enabled:
        return 0
    return routing.remove_all_tproxy(netns, pairs=[(spec.tproxy_mark, spec.tproxy_route_table)])


def _count(plan: IptablesPlan) -> int:
    return sum(len(plan.ops(f)) for f in plan.families())


def _drift_error(netns: Netns, name: str, drift: list[str], force: bool) -> ApplyError:
    if not drift:
        return ApplyError(f"{netns.label}: Istio chains already exist ({name}) and --force-apply cannot write "
                          f"over them; use --reconcile to replace them")
    shown = "; ".join(drift[:5]) + (f"; ... ({len(drift) - 5} more)" if len(drift) > 5 else "")
    return ApplyError(f"{netns.label}: existing Istio rules ({name}) differ from the spec: {shown} "
                      f"(use --reconcile to replace them, or meshnet cleanup)")


def _ensure_routing(netns: Netns, spec: Spec) -> routing.Changes:
    """Add the TPROXY routing / ::6 address the spec needs and the namespace lacks."""
    changes = routing.Changes()
    try:
        if spec.enable_ipv6:
            routing.add_passthrough_v6(netns, changes)
        if spec.tproxy and spec.inbound_enabled:
            routing.add_tproxy(netns, spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6, changes)
    except BaseException:
        routing.remove(netns, changes)
        raise
    return changes


def _write_xtables(netns: Netns, spec: Spec, plan: IptablesPlan, xt: Xtables, name: str,
                   before: dict[Family, str]) -> None:
    """Routing, then v4, then v6; on any failure (even an interrupt) undo all of it.

    `before` is each family's save output from just before: rollback removes only the rules that
    are there now and were not then.
    """
    from meshnet.render.restore import render_family

    changes = routing.Changes()
    started: list[Family] = []
    try:
        changes = _ensure_routing(netns, spec)
        started.extend(plan.families())
        if name == IPTC:
            from meshnet.backends.iptc_backend import write_families

            write_families(netns, {fam: plan.ops(fam) for fam in plan.families()})
        else:  # both families in one detached spawn: no kill of meshnet can leave one without the other
            xt.restore_families(netns, {fam: render_family(plan, fam) for fam in plan.families()})
    except BaseException as exc:
        problems = _rollback_xtables(netns, xt, plan, started, before)
        problems += _safely(lambda: routing.remove(netns, changes))
        if problems and isinstance(exc, ApplyError):
            raise ApplyError(f"{exc}; rollback incomplete ({'; '.join(problems)}): run meshnet cleanup") from None
        raise


def _safely(fn: Any) -> list[str]:
    try:
        fn()
    except Exception as exc:  # rollback keeps going; the caller reports what is left
        return [str(exc)]
    return []


def _rollback_xtables(netns: Netns, xt: Xtables, plan: IptablesPlan, families: list[Family],
                      before: dict[Family, str]) -> list[str]:
    """Remove what this run committed (the namespace had no Istio chains before it)."""
    from collections import Counter

    from meshnet.backends.xt_cleanup import builtin_keys, plan_removal

    problems: list[str] = []
    for fam in families:
        def undo(fam: Family = fam) -> None:
            ops = plan.ops(fam)
            ours = Counter(op.rule.key() for op in ops if op.rule.chain in BUILTIN_CHAINS)
            inserted = frozenset(op.rule.key() for op in ops if op.position is not None)
            now = xt.save(netns, fam)
            added = (builtin_keys(now) - builtin_keys(before.get(fam, ""))) & ours
            rs = plan.ruleset(fam)
            _remove(netns, xt, fam, plan_removal(now, fam, only=added, first=inserted),
                    prune={t: set(rs.chain_names(t)) & BUILTIN_CHAINS for t in rs.tables})
        problems += _safely(undo)
    return problems


def _remove(netns: Netns, xt: Xtables, fam: Family, removal: Removal,
            prune: dict[str, set[str] | None]) -> None:
    if not removal.empty:
        xt.restore(netns, fam, removal.restore_text())
    if xt.variant == "nft" and prune:
        from meshnet.backends.nft_prune import prune_empty

        prune_empty(netns, fam, prune)


def _guardrail_text(op: str) -> str:
    """Istio's guardrail set as its own restore (`-I` in, `-D` out), for callers that still need one
    (ambient mode). The sidecar reconcile never uses it: see backends/xt_swap.py."""
    from meshnet.backends import guardrails

    if op == "-I":
        return guardrails.insert_text()
    return "*filter\n" + "\n".join(guardrails.delete_lines(1)) + "\nCOMMIT\n"


def _reconcile_xtables(netns: Netns, spec: Spec, plan: IptablesPlan, xt: Xtables, name: str,
                       before: dict[Family, str]) -> None:
    """Istio's reconcile (guardrails, clean, re-apply, guardrails off) as ONE restore per family.

    See backends/xt_swap.py: nothing a kill of meshnet can interrupt leaves the guardrails in. The
    new TPROXY routing goes in first and the stale one out last, so the rules in force always have
    theirs. iptc reconciles through iptables-legacy-restore too: python-iptables cannot commit
    the guardrails and the swap as one payload. If a restore fails, the tables are put back
    exactly as they were saved (with counters) and any guardrail it committed is removed.
    """
    from meshnet.backends import guardrails
    from meshnet.backends.xt_cleanup import istio_marks, plan_removal
    from meshnet.backends.xt_swap import swap_payload
    from meshnet.render.restore import render_family

    changes = _ensure_routing(netns, spec)
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
            _safely(lambda fam=fam: _undo_swap(netns, xt, plan, fam, before[fam]))
        _safely(lambda: routing.remove(netns, changes))
        raise
    keep = (spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6) if spec.tproxy and spec.inbound_enabled \
        else (0, 0, False)
    routing.remove_all_tproxy(netns, marks, keep=keep)  # stale Istio routing only, after the swap
    if xt.variant == "nft" and not any("*filter" in text for text in before.values()):
        from meshnet.backends.nft_prune import prune_empty

        for fam in plan.families():  # the guardrails made iptables-nft create the filter table
            prune_empty(netns, fam, {"filter": set(guardrails.CHAINS)})


def _undo_swap(netns: Netns, xt: Xtables, plan: IptablesPlan, fam: Family, saved: str) -> None:
    from meshnet.backends import guardrails
    from meshnet.parse.iptables_save import parse_save

    had = set(parse_save(strip_counters(saved), fam).tables)
    # A table that did not exist before held nothing: flushing it takes out what the swap wrote.
    empty = "".join(f"*{t}\nCOMMIT\n" for t in sorted(set(plan.ruleset(fam).tables) - had - {"filter"}))
    _restore_tables(netns, xt, fam, saved + "\n" + empty, (had | set(plan.ruleset(fam).tables)) - {"filter"}
                    | ({"filter"} if "filter" in had else set()))
    extra = guardrails.count_sets(strip_counters(xt.save(netns, fam))) - guardrails.count_sets(strip_counters(saved))
    if extra > 0:
        xt.restore(netns, fam, "*filter\n" + "\n".join(guardrails.delete_lines(extra)) + "\nCOMMIT\n")
    if xt.variant == "nft" and "*filter" not in saved:
        from meshnet.backends.nft_prune import prune_empty

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


# ------------------------------------------------------------------------------------ nftables
def _apply_nft(netns: Netns, spec: Spec, reconcile: bool, force: bool) -> ApplyResult:
    from meshnet.backends import nftables
    from meshnet.nft_builder import build_nft
    from meshnet.render.nft import render_nft

    plan = build_nft(spec)
    present = nftables.live(netns)
    text = render_nft(plan)
    if not present.empty:
        drift = nftables.drift(plan, present)
        if not drift and not force:
            return _already_applied(netns, spec, NFTABLES)
        if not reconcile:
            raise _drift_error(netns, NFTABLES, drift, force)
        # Old tables out and new ones in, in the same transaction: no window to guard.
        text = nftables.cleanup_text(present) + text
    changes = routing.Changes()
    try:
        changes = _ensure_routing(netns, spec)  # new routing before the rules that need it
        nftables.transaction(netns, text)
    except BaseException:
        routing.remove(netns, changes)
        raise
    if not present.empty:  # and the old rules' routing only after they are gone
        keep = (spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6) \
            if spec.tproxy and spec.inbound_enabled else (0, 0, False)
        marks = routing.nft_marks(a for rs in present.chains.values() for r in rs for a in r.action)
        routing.remove_all_tproxy(netns, marks, keep=keep)
    verb = "replaced" if not present.empty else "applied"
    return ApplyResult(NFTABLES, True, f"{verb} {len(plan.ops)} nft rules in {netns.label} (one transaction)")


# ------------------------------------------------------------------------------------ cleanup
def cleanup(netns: Netns, *, backend: str = "all", spec: Spec | None = None) -> CleanupResult:
    """Remove everything meshnet or Istio installed, whatever the config was, and only that (under the
    writer lock). TPROXY routing goes only in Istio's shape, with the mark read from the live Istio
    rules (or the pair of `spec`, or Istio's defaults).
    """
    if backend != "all" and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: expected all, {', '.join(BACKENDS)}")
    with nslock.locked(netns):
        return _cleanup_locked(netns, backend, spec)


def _cleanup_locked(netns: Netns, backend: str, spec: Spec | None = None) -> CleanupResult:
    from meshnet.backends.xt_cleanup import istio_marks, plan_removal

    wanted = set(BACKENDS) if backend == "all" else {backend}
    cleaned: list[str] = []
    removed: list[str] = []
    variants = []
    marks: set[int] = {spec.tproxy_mark} if spec is not None else set()
    if wanted & {LEGACY, IPTC}:
        variants.append(Xtables("legacy"))
    if NFT in wanted:
        variants.append(Xtables("nft"))
    for xt in variants:
        if not xt.available():
            continue
        for fam in (4, 6):
            if xt.variant == "legacy" and not legacy_tables(netns, fam):
                continue
            text = xt.save(netns, fam)
            marks |= istio_marks([text])
            unblocked = _drop_leftover_guardrails(netns, xt, {fam: text})
            if unblocked:
                removed += unblocked
                if xt.variant == "nft":
                    from meshnet.backends.nft_prune import prune_empty

                    prune_empty(netns, fam, {"filter": {"INPUT", "FORWARD", "OUTPUT"}})
                if xt.backend not in cleaned:
                    cleaned.append(xt.backend)
                text = xt.save(netns, fam)
            removal = plan_removal(text, fam, marks=marks,
                                   interfaces=spec.exclude_interfaces if spec is not None else None)
            if removal.empty:
                continue
            _remove(netns, xt, fam, removal, prune={t: None for t in removal.tables()})
            tool = xt.binary(fam, "")
            removed += [f"{tool} -t {t} {line}" for t in removal.tables() for line in removal.lines(t)]
            if xt.backend not in cleaned:
                cleaned.append(xt.backend)
    # Without the nft tool no native nftables rules can have been written here (a node image may lack it).
    if NFTABLES in wanted and which("nft") is not None:
        from meshnet.backends import nftables
        from meshnet.nft_model import AMBIENT_PREFIX, TABLE_PREFIX

        for prefix in (TABLE_PREFIX, AMBIENT_PREFIX):  # sidecar's and ambient mode's tables
            present = nftables.live(netns, prefix)
            if not present.empty:
                if prefix == TABLE_PREFIX:
                    marks |= routing.nft_marks(a for rules in present.chains.values() for r in rules
                                               for a in r.action)
                text = nftables.cleanup_text(present, prefix)
                nftables.transaction(netns, text)
                removed += [line for line in text.splitlines() if line.startswith("delete")]
                if NFTABLES not in cleaned:
                    cleaned.append(NFTABLES)
    if backend == "all":
        if routing._any_fwmark_rule(netns):  # ambient's masked rule first (pyroute2 only when some fwmark rule exists)
            from meshnet.ambient.routing import remove_all as remove_ambient_routing

            removed += remove_ambient_routing(netns)
        pairs = [(spec.tproxy_mark, spec.tproxy_route_table)] if spec is not None else []
        n = routing.remove_all_tproxy(netns, marks, pairs)
        removed += [f"ip rule fwmark ... lookup (TPROXY) x{n}"] if n else []
        if routing.del_passthrough_v6(netns):
            removed.append("ip -6 addr del ::6/128 dev lo")
    msg = f"removed {len(removed)} item(s) from {netns.label}" if removed else f"nothing to remove in {netns.label}"
    return CleanupResult(tuple(cleaned), tuple(removed), msg)


# ------------------------------------------------------------------------------------ status
def status(netns: Netns, spec: Spec | None = None) -> Status:
    from meshnet.parse.iptables_save import parse_save

    holders: list[str] = []
    saves: dict[str, dict[Family, str]] = {}
    for xt in (Xtables("legacy"), Xtables("nft")):
        if not xt.available():
            continue
        texts: dict[Family, str] = {fam: xt.save(netns, fam) for fam in (4, 6)}
        saves[xt.backend] = texts
        if any(parse_save(strip_counters(t), f).istio_chains() for f, t in texts.items()):
            holders.append(xt.backend)
    from meshnet.backends import nftables
    from meshnet.nft_model import AMBIENT_PREFIX

    present = nftables.live(netns)
    if not present.empty or (spec is None and not nftables.live(netns, AMBIENT_PREFIX).empty):
        holders.append(NFTABLES)  # (ambient pods' tables count as Istio's when no sidecar spec is checked)
    drift: list[str] = []
    notes: list[str] = []
    if len(holders) > 1:
        notes.append(f"Istio rules are installed by several backends at once: {', '.join(holders)}")
    tproxy = routing.tproxy_present(netns) if spec is None else routing.tproxy_present(
        netns, spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6)
    passthrough = routing.has_passthrough_v6(netns)
    if spec is not None:
        drift = _status_drift(spec, holders, saves, present)
        if spec.tproxy and spec.inbound_enabled and not tproxy:
            drift.append(f"~ TPROXY routing missing: ip rule fwmark {spec.tproxy_mark} lookup "
                         f"{spec.tproxy_route_table} / local default dev lo")
        elif not (spec.tproxy and spec.inbound_enabled) and routing.tproxy_present(
                netns, spec.tproxy_mark, spec.tproxy_route_table):
            drift.append(f"+ TPROXY routing without TPROXY rules: ip rule fwmark {spec.tproxy_mark} lookup "
                         f"{spec.tproxy_route_table} (a reconcile from TPROXY stopped before its end)")
        if spec.enable_ipv6 and not passthrough:
            drift.append("~ ::6/128 missing on lo")
    return Status(tuple(holders), tuple(drift), tproxy, passthrough, spec is not None, tuple(notes))


def _status_drift(spec: Spec, holders: list[str], saves: dict[str, dict[Family, str]], present: Any) -> list[str]:
    if not holders:
        return ["~ no Istio rules installed"]
    if holders == [NFTABLES]:
        from meshnet.backends import nftables
        from meshnet.nft_builder import build_nft

        return nftables.drift(build_nft(spec), present)
    from meshnet.istio_builder import build_iptables

    plan = build_iptables(spec)
    lines: list[str] = []
    for holder in holders:
        if holder == NFTABLES:
            lines.append("+ nft: Istio tables present as well as iptables rules")
            continue
        texts = saves[holder]
        lines.extend(_xt_drift(plan, {f: texts[f] for f in plan.families()})[1])
    return lines
