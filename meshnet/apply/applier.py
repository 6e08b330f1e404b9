"""Program a pod's network namespace from a Spec: atomic, idempotent, reversible.

Flow of `apply_spec`: pick the backend (Istio's detection, without side effects), read the live
state once, then

* no Istio state           -> write: TPROXY routing first, then one restore per family (or one nft
                              transaction); any failure removes exactly what this run added;
* same state as the spec   -> no-op (`changed=False`);
* different state          -> ApplyError naming the drift, unless `reconcile` (clean and re-apply
                              behind Istio's DROP guardrails; nftables swaps tables in one transaction).

This module is that state machine (`run`) plus detection, cleanup orchestration and status; what
each backend does lives behind the seam in backends/base.py (xt_backend.py, nft_backend.py).

Nothing here runs in the caller's thread namespace: binaries go through `nsenter` (Netns.run),
netlink through pyroute2 bound to the namespace.
"""

from __future__ import annotations

from meshnet.apply.backends import BACKENDS, IPTC, LEGACY, NFT, NFTABLES, nslock, routing
from meshnet.apply.backends.base import safely as _safely
from meshnet.apply.backends.xt_backend import _guardrail_text, _rollback_xtables
from meshnet.apply.backends.xtables import Xtables, legacy_tables, strip_counters
from meshnet.apply.netns import Netns, which
from meshnet.errors import ApplyError, UsageError
from meshnet.lite.records import dataclass, field
from meshnet.plan.model import Family
from meshnet.spec.spec import Spec

TYPE_CHECKING = False  # `typing` costs ~4 ms at start-up; only type checkers need it
if TYPE_CHECKING:
    from typing import Any

    from meshnet.apply.backends.base import Backend, Live

# meshnet.ambient.apply builds on the xtables rollback and the guardrails: kept importable here.
_AMBIENT_API = (_guardrail_text, _rollback_xtables, _safely)

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
    from meshnet.state.addresses import ipv6_enabled

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
        from meshnet.apply.backends.xt_backend import XtablesBackend, one_atomic_restore, try_fresh_write

        nft = XtablesBackend(NFT)
        plan = nft.plan(spec)
        if one_atomic_restore(plan) and nft.xt.available():
            written = try_fresh_write(netns, plan, nft.xt, unless_legacy=True)
            if written:
                return ApplyResult(NFT, True, nft.applied(netns, spec))
            if written is False:  # no legacy table, so Istio's choice is iptables-nft: its write was tried
                return run(netns, spec, nft, reconcile, force, fast=False)  # read, compare, decide
    return run(netns, spec, backend_for(_resolve(netns, backend)), reconcile, force)


def backend_for(name: str) -> Backend:
    """The Backend object of a resolved backend name."""
    if name == NFTABLES:
        from meshnet.apply.backends.nft_backend import NftablesBackend

        return NftablesBackend()
    from meshnet.apply.backends.xt_backend import XtablesBackend

    return XtablesBackend(name).require()


def run(netns: Netns, spec: Spec, backend: Backend, reconcile: bool = False, force: bool = False,
        fast: bool = True) -> ApplyResult:
    """The state machine, the same for every backend (unit-tested against a stub backend):
    fresh -> write; same spec -> no-op (+ repairs); drift -> error, or reconcile when asked."""
    name = backend.name
    if fast and backend.fast_write(netns, spec):  # a fresh pod written without reading first
        return ApplyResult(name, True, backend.applied(netns, spec))
    live = backend.read(netns, spec)
    if not live.residue:
        return ApplyResult(name, True, backend.write(netns, spec, live))
    if not live.drift and not force:
        return _already_applied(netns, spec, backend, live)
    if not reconcile:
        raise _drift_error(netns, name, live.drift, force)
    return ApplyResult(name, True, backend.reconcile(netns, spec, live))


def _already_applied(netns: Netns, spec: Spec, backend: Backend, live: Live) -> ApplyResult:
    """The rules match the spec: only TPROXY routing / ::6 may need restoring (and stale routing going)."""
    unblocked = backend.repair(netns, spec, live)
    changes = backend.ensure_routing(netns, spec)
    stale = backend.remove_stale_routing(netns, spec)
    what = "; restored missing routing" if not changes.empty else ""
    what += "; removed stale TPROXY routing" if stale else ""
    what += "; removed leftover DROP guardrails" if unblocked else ""
    changed = bool(not changes.empty or stale or unblocked)
    verdict = "repaired" if changed else "no change"
    return ApplyResult(backend.name, changed, f"already applied in {netns.label}: {verdict}{what}")


def _drift_error(netns: Netns, name: str, drift: list[str], force: bool) -> ApplyError:
    if not drift:
        return ApplyError(f"{netns.label}: Istio chains already exist ({name}) and --force-apply cannot write "
                          f"over them; use --reconcile to replace them")
    shown = "; ".join(drift[:5]) + (f"; ... ({len(drift) - 5} more)" if len(drift) > 5 else "")
    return ApplyError(f"{netns.label}: existing Istio rules ({name}) differ from the spec: {shown} "
                      f"(use --reconcile to replace them, or meshnet cleanup)")


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
    from meshnet.apply.backends.nft_backend import NftablesBackend
    from meshnet.apply.backends.xt_backend import XtablesBackend

    wanted = set(BACKENDS) if backend == "all" else {backend}
    cleaned: list[str] = []
    removed: list[str] = []
    marks: set[int] = {spec.tproxy_mark} if spec is not None else set()
    backends: list[Any] = []
    if wanted & {LEGACY, IPTC}:
        backends.append(XtablesBackend(LEGACY))
    if NFT in wanted:
        backends.append(XtablesBackend(NFT))
    # Without the nft tool no native nftables rules can have been written here (a node image may lack it).
    if NFTABLES in wanted and which("nft") is not None:
        backends.append(NftablesBackend())
    for each in backends:
        lines = each.cleanup(netns, marks, spec)
        if lines:
            removed += lines
            cleaned.append(each.name)
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
    from meshnet.state.parse_save import parse_save

    holders: list[str] = []
    saves: dict[str, dict[Family, str]] = {}
    for xt in (Xtables("legacy"), Xtables("nft")):
        if not xt.available():
            continue
        texts: dict[Family, str] = {fam: xt.save(netns, fam) for fam in (4, 6)}
        saves[xt.backend] = texts
        if any(parse_save(strip_counters(t), f).istio_chains() for f, t in texts.items()):
            holders.append(xt.backend)
    from meshnet.apply.backends import nftables
    from meshnet.plan.nft_model import AMBIENT_PREFIX

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
        from meshnet.apply.backends import nftables
        from meshnet.plan.nft_builder import build_nft

        return nftables.drift(build_nft(spec), present)
    from meshnet.apply.backends.xt_backend import xt_drift
    from meshnet.plan.istio_builder import build_iptables

    plan = build_iptables(spec)
    lines: list[str] = []
    for holder in holders:
        if holder == NFTABLES:
            lines.append("+ nft: Istio tables present as well as iptables rules")
            continue
        texts = saves[holder]
        lines.extend(xt_drift(plan, {f: texts[f] for f in plan.families()})[1])
    return lines
