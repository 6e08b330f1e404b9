"""Program a pod's namespace (in-pod rules + policy routing) or a node's (probe SNAT + ipsets) for ambient mode.

The same guarantees as sidecar mode, built from the same backend pieces (Xtables restores, the
iptc worker, one nft transaction, position-based removal from xt_cleanup):

* nothing of ours there -> write (routing first, then one restore per family, or one nft
  transaction); any failure removes exactly what this run added;
* the same rules there  -> no-op (missing routing / sets are restored);
* different rules       -> ApplyError naming the drift, unless `reconcile`: behind Istio's DROP
  guardrails the old rules go and the spec's come in (nftables: one transaction).
"""

from __future__ import annotations

from meshnet.ambient import routing as amb_routing
from meshnet.ambient.spec import PROBE_IPSET, AmbientSpec
from meshnet.apply.applier import (
    ApplyResult,
    CleanupResult,
    _guardrail_text,
    _rollback_xtables,
    _safely,
    detect_backend,
)
from meshnet.apply.backends import BACKENDS, IPTC, LEGACY, NFTABLES, nslock, routing
from meshnet.apply.backends.xtables import Xtables, strip_counters
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError, SpecError, UsageError
from meshnet.plan.model import IptablesPlan
from meshnet.plan.nft_model import AMBIENT_PREFIX, NftPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.plan.model import Family

KUBELET_NAMES = ("kubelet", "kubelite", "k3s")


# ------------------------------------------------------------------------------------ plans
def xt_plan(spec: AmbientSpec, host: bool) -> IptablesPlan:
    from meshnet.ambient.xt_builder import build_host, build_inpod

    return build_host(spec) if host else build_inpod(spec)


def nft_plan(spec: AmbientSpec, host: bool) -> NftPlan:
    from meshnet.ambient.nft_builder import build_host_nft, build_inpod_nft

    return build_host_nft(spec) if host else build_inpod_nft(spec)


def kubelet_uid(proc: str = "/proc") -> str:
    """The uid kubelet runs as, as istio-cni finds it (comm kubelet/kubelite with 'kubelet' in argv, or k3s)."""
    import os

    for pid in (p for p in os.listdir(proc) if p.isdigit()):
        try:
            with open(f"{proc}/{pid}/comm") as fh:
                comm = fh.read().strip()
            if comm not in KUBELET_NAMES:
                continue
            if comm != "k3s":
                with open(f"{proc}/{pid}/cmdline", "rb") as fh:
                    if b"kubelet" not in fh.read():
                        continue
            return str(os.stat(f"{proc}/{pid}").st_uid)
        except OSError:
            continue  # the process went away
    raise SpecError("kubelet_uid", "", "no kubelet process found: give --kubelet-uid")


# ------------------------------------------------------------------------------------ apply
def apply_ambient(netns: Netns, spec: AmbientSpec, *, backend: str = "auto", reconcile: bool = False,
                  host: bool = False) -> ApplyResult:
    """Under the namespace's writer lock, like sidecar applies (one writer per namespace)."""
    with nslock.locked(netns):
        return _apply_locked(netns, spec, backend, reconcile, host)


def _apply_locked(netns: Netns, spec: AmbientSpec, backend: str, reconcile: bool, host: bool) -> ApplyResult:
    name = detect_backend(netns) if backend == "auto" else backend
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: expected auto, {', '.join(BACKENDS)}")
    if name == NFTABLES:
        if host and not spec.kubelet_uid:
            spec = spec.with_changes(kubelet_uid=kubelet_uid())
        return _apply_nft(netns, spec, reconcile, host)
    return _apply_xt(netns, spec, name, reconcile, host)


def _xt(name: str) -> Xtables:
    xt = Xtables("legacy" if name in (LEGACY, IPTC) else "nft")
    if not xt.available():
        raise ApplyError(f"{xt.binary(4, 'restore')} not found")
    return xt


def _drift(plan: IptablesPlan, live_text: dict[Family, str]) -> tuple[bool, list[str]]:
    from meshnet.state.compare import diff_rulesets
    from meshnet.state.parse_save import parse_save

    residue, lines = False, []
    for fam, text in live_text.items():
        live = parse_save(strip_counters(text), fam)
        residue = residue or bool(live.istio_chains())
        lines += diff_rulesets(plan.ruleset(fam), live).lines()
    return residue, lines


def _prerequisites(netns: Netns, spec: AmbientSpec, host: bool, changes: routing.Changes) -> list[str]:
    """In a pod: policy routing. On a node: the probe ipsets the SNAT rule matches (kept on cleanup-less
    re-runs; Istio creates them with `comment` so each entry can name its pod)."""
    if not host:
        amb_routing.add(netns, spec.enable_ipv6, changes)
        return []
    made = []
    for fam in spec.families():
        set_name = f"{PROBE_IPSET}-v{fam}"
        if netns.run(["ipset", "list", "-n", set_name], check=False).returncode == 0:
            continue
        family = "inet6" if fam == 6 else "inet"
        netns.run(["ipset", "create", set_name, "hash:ip", "family", family, "comment"], timeout=30)
        made.append(set_name)
    return made


def _destroy_sets(netns: Netns, names: list[str]) -> None:
    for set_name in names:
        netns.run(["ipset", "destroy", set_name], check=False, timeout=30)


def _apply_xt(netns: Netns, spec: AmbientSpec, name: str, reconcile: bool, host: bool) -> ApplyResult:
    xt = _xt(name)
    plan = xt_plan(spec, host)
    before = {fam: xt.save(netns, fam) for fam in plan.families()}
    residue, drift = _drift(plan, before)
    if residue and not drift:
        changes = routing.Changes()
        made = _prerequisites(netns, spec, host, changes)
        what = "; restored missing routing/sets" if made or not changes.empty else ""
        return ApplyResult(name, bool(made) or not changes.empty, f"already applied in {netns.label}: no change{what}")
    if residue and not reconcile:
        shown = "; ".join(drift[:5]) + (f"; ... ({len(drift) - 5} more)" if len(drift) > 5 else "")
        raise ApplyError(f"{netns.label}: existing Istio rules ({name}) differ from the ambient spec: {shown} "
                         f"(use --reconcile to replace them, or meshnet cleanup)")
    if residue:
        _reconcile_xt(netns, spec, plan, xt, name, host, before)
        return ApplyResult(name, True, f"reconciled {netns.label}: {len(drift)} difference(s) replaced by the spec")
    _write_xt(netns, spec, plan, xt, name, host, before)
    count = sum(len(plan.ops(f)) for f in plan.families())
    return ApplyResult(name, True, f"applied {count} ambient rules with {name} in {netns.label}")


def _write_xt(netns: Netns, spec: AmbientSpec, plan: IptablesPlan, xt: Xtables, name: str, host: bool,
              before: dict[Family, str]) -> None:
    from meshnet.plan.render_restore import render_family

    changes = routing.Changes()
    made: list[str] = []
    started: list[Family] = []
    try:
        made = _prerequisites(netns, spec, host, changes)
        for fam in plan.families():
            started.append(fam)
            if name == IPTC:
                from meshnet.apply.backends.iptc_backend import write_family

                write_family(netns, fam, plan.ops(fam))
            else:
                xt.restore(netns, fam, render_family(plan, fam))
    except BaseException as exc:
        problems = _rollback_xtables(netns, xt, plan, started, before)
        problems += _safely(lambda: amb_routing.undo(netns, changes))
        problems += _safely(lambda: _destroy_sets(netns, made))
        if problems and isinstance(exc, ApplyError):
            raise ApplyError(f"{exc}; rollback incomplete ({'; '.join(problems)}): run meshnet cleanup") from None
        raise


def _reconcile_xt(netns: Netns, spec: AmbientSpec, plan: IptablesPlan, xt: Xtables, name: str, host: bool,
                  before: dict[Family, str]) -> None:
    """Istio's reconcile: DROP guardrails, remove the old rules, write the spec's, guardrails off (always)."""
    from meshnet.apply.backends.nft_prune import prune_empty
    from meshnet.apply.backends.xt_cleanup import plan_removal

    guarded: list[Family] = []
    existing = {fam: _nft_chains(netns, fam, "filter") for fam in plan.families()} if xt.variant == "nft" else {}
    try:
        for fam in plan.families():
            xt.restore(netns, fam, _guardrail_text("-I"))
            guarded.append(fam)
        cleaned: dict[Family, str] = {}
        for fam in plan.families():
            removal = plan_removal(xt.save(netns, fam), fam)
            xt.restore(netns, fam, removal.restore_text())
            if xt.variant == "nft":  # tables the new rules do not use must not stay behind, empty
                unused = set(removal.tables()) - set(plan.ruleset(fam).tables)
                prune_empty(netns, fam, {t: None for t in unused})
            cleaned[fam] = xt.save(netns, fam)
        _write_xt(netns, spec, plan, xt, name, host, cleaned)
    finally:
        for fam in guarded:
            _safely(lambda fam=fam: xt.restore(netns, fam, _guardrail_text("-D")))
            if xt.variant == "nft":  # the guardrails' base chains that did not exist before go again
                made = {"INPUT", "FORWARD", "OUTPUT"} - existing[fam]
                prune_empty(netns, fam, {"filter": made})


def _nft_chains(netns: Netns, fam: Family, table: str) -> set[str]:
    """Chains iptables-nft really created (its save output shows every builtin chain of a table)."""
    import json

    cp = netns.run(["nft", "-j", "list", "table", "ip6" if fam == 6 else "ip", table], check=False, timeout=30)
    if cp.returncode != 0:
        return set()
    return {item["chain"]["name"] for item in json.loads(cp.stdout).get("nftables", []) if "chain" in item}


def _nft_sets_text(spec: AmbientSpec) -> str:
    """istio-cni's HostNftSetManager: the probe sets live in the node's ambient nat table."""
    table = f"inet {AMBIENT_PREFIX}nat"
    out = f"add table {table}\n"
    for fam in spec.families():
        kind = "ipv6_addr" if fam == 6 else "ipv4_addr"
        out += f"add set {table} {PROBE_IPSET}-v{fam} {{ type {kind} ; }}\n"
    return out


def _apply_nft(netns: Netns, spec: AmbientSpec, reconcile: bool, host: bool) -> ApplyResult:
    from meshnet.apply.backends import nftables
    from meshnet.plan.render_nft import render_nft

    plan = nft_plan(spec, host)
    present = nftables.live(netns, AMBIENT_PREFIX)
    text = (_nft_sets_text(spec) if host else "") + render_nft(plan)
    changes = routing.Changes()
    if not present.empty:
        drift = nftables.drift(plan, present)
        if not drift:
            if not host:
                amb_routing.add(netns, spec.enable_ipv6, changes)
            what = "; restored missing routing" if not changes.empty else ""
            return ApplyResult(NFTABLES, not changes.empty, f"already applied in {netns.label}: no change{what}")
        if not reconcile:
            shown = "; ".join(drift[:5])
            raise ApplyError(f"{netns.label}: existing Istio rules (nftables) differ from the ambient spec: {shown} "
                             f"(use --reconcile to replace them, or meshnet cleanup)")
        if not host:  # the node's table holds the probe sets: `flush table` keeps them, delete would not
            text = nftables.cleanup_text(present, AMBIENT_PREFIX) + text
    try:
        if not host:
            amb_routing.add(netns, spec.enable_ipv6, changes)
        nftables.transaction(netns, text)
    except BaseException:
        amb_routing.undo(netns, changes)
        raise
    verb = "replaced" if not present.empty else "applied"
    return ApplyResult(NFTABLES, True, f"{verb} {len(plan.ops)} ambient nft rules in {netns.label} (one transaction)")


# ------------------------------------------------------------------------------------ cleanup
def cleanup_ambient(netns: Netns, *, host: bool = False) -> CleanupResult:
    """Everything ambient mode adds, on every backend: ISTIO_* chains and jumps, the ambient nft tables,
    and in a pod the policy routing, on a node the probe ipsets. Nothing else is touched."""
    with nslock.locked(netns):
        return _cleanup_locked(netns, host)


def _cleanup_locked(netns: Netns, host: bool) -> CleanupResult:
    from meshnet.apply.backends import nftables
    from meshnet.apply.backends.xt_cleanup import plan_removal
    from meshnet.apply.backends.xtables import legacy_tables

    removed: list[str] = []
    cleaned: list[str] = []
    for xt in (Xtables("legacy"), Xtables("nft")):
        if not xt.available():
            continue
        for fam in (4, 6):
            if xt.variant == "legacy" and not legacy_tables(netns, fam):
                continue
            removal = plan_removal(xt.save(netns, fam), fam)
            if removal.empty:
                continue
            xt.restore(netns, fam, removal.restore_text())
            if xt.variant == "nft":
                from meshnet.apply.backends.nft_prune import prune_empty

                prune_empty(netns, fam, {t: None for t in removal.tables()})
            removed += [f"{xt.binary(fam, '')} -t {t} {line}" for t in removal.tables() for line in removal.lines(t)]
            if xt.backend not in cleaned:
                cleaned.append(xt.backend)
    present = nftables.live(netns, AMBIENT_PREFIX)
    if not present.empty or (host and _nft_table_exists(netns)):
        held = {t for t, _ in present.chains} | ({"nat"} if host else set())  # the node's nat table may hold only sets
        text = "".join(f"add table inet {AMBIENT_PREFIX}{t}\ndelete table inet {AMBIENT_PREFIX}{t}\n"
                       for t in ("nat", "mangle", "raw") if t in held)
        nftables.transaction(netns, text)
        removed += [line for line in text.splitlines() if line.startswith("delete")]
        cleaned.append(NFTABLES)
    if host:
        for fam in (4, 6):
            set_name = f"{PROBE_IPSET}-v{fam}"
            if netns.run(["ipset", "list", "-n", set_name], check=False).returncode == 0:
                if netns.run(["ipset", "destroy", set_name], check=False).returncode == 0:
                    removed.append(f"ipset destroy {set_name}")
    else:
        removed += amb_routing.remove_all(netns)
    msg = f"removed {len(removed)} item(s) from {netns.label}" if removed else f"nothing to remove in {netns.label}"
    return CleanupResult(tuple(cleaned), tuple(removed), msg)


def _nft_table_exists(netns: Netns) -> bool:
    return netns.run(["nft", "list", "table", "inet", f"{AMBIENT_PREFIX}nat"], check=False).returncode == 0


# ------------------------------------------------------------------------------------ status
def ambient_drift(netns: Netns, spec: AmbientSpec, *, host: bool = False) -> list[str]:
    """Differences between the namespace and the spec, whichever backend holds the rules ('' = in sync)."""
    from meshnet.apply.backends import nftables

    lines: list[str] = []
    holders = []
    for xt in (Xtables("legacy"), Xtables("nft")):
        if not xt.available():
            continue
        plan = xt_plan(spec, host)
        texts = {fam: xt.save(netns, fam) for fam in plan.families()}
        residue, drift = _drift(plan, texts)
        if residue:
            holders.append(xt.backend)
            lines += drift
    present = nftables.live(netns, AMBIENT_PREFIX)
    if not present.empty:
        holders.append(NFTABLES)
        lines += nftables.drift(nft_plan(spec, host), present)
    if not holders:
        return ["~ no ambient rules installed"]
    if len(holders) > 1:
        lines.append(f"~ ambient rules are installed by several backends at once: {', '.join(holders)}")
    if not host:
        lines += amb_routing.missing(netns, spec.enable_ipv6)
    return lines
