"""Program a pod's namespace (in-pod rules + policy routing) or a node's (probe SNAT + ipsets) for ambient mode.

The same guarantees as sidecar mode, built from the same backend pieces (ambient/xt_apply.py for
the iptables backends, one nft transaction for nftables), all under the namespace's writer lock:

* nothing of ours there -> write: routing (or the node's ipsets) first, then both families in ONE
  detached spawn (or one nft transaction); any failure removes exactly what this run added;
* the same rules there  -> no-op (missing routing / sets restored; leftover DROP guardrails and an
  earlier IPv6 spec's routing removed);
* different rules       -> ApplyError naming the drift, unless `reconcile`: per family ONE restore
  (guardrails in, old rules out, new in, guardrails out), both families in one detached spawn
  (nftables: old tables out and new in, one transaction).

A SIGKILL at any point leaves the old rules or the new ones, never guardrails or half a ruleset;
at most the routing is ahead of the rules (re-running the same command completes it exactly):
tests/kernel/test_ambient_faults.py.
"""

from __future__ import annotations

from meshnet.ambient import routing as amb_routing
from meshnet.ambient import xt_apply
from meshnet.ambient.spec import PROBE_IPSET, AmbientSpec
from meshnet.apply.applier import ApplyResult, CleanupResult, _rollback_xtables, _safely, detect_backend
from meshnet.apply.backends import BACKENDS, IPTC, LEGACY, NFTABLES, nslock, routing
from meshnet.apply.backends.xtables import Xtables, strip_counters
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError, SpecError, UsageError
from meshnet.plan.nft_model import AMBIENT_PREFIX, NftPlan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.plan.model import Family, IptablesPlan

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
    # both families: a reconcile to IPv4 only removes IPv6's
    before: dict[Family, str] = {fam: xt.save(netns, fam) for fam in (4, 6)}
    residue, drift = _drift(plan, before)
    if residue and not drift:
        return _already_applied(netns, spec, xt, name, host, before)
    if residue and not reconcile:
        shown = "; ".join(drift[:5]) + (f"; ... ({len(drift) - 5} more)" if len(drift) > 5 else "")
        raise ApplyError(f"{netns.label}: existing Istio rules ({name}) differ from the ambient spec: {shown} "
                         f"(use --reconcile to replace them, or meshnet cleanup)")
    changes = routing.Changes()
    made: list[str] = []
    try:
        made = _prerequisites(netns, spec, host, changes)  # what the new rules need, before them
        if residue:
            xt_apply.reconcile(netns, xt, plan, before)
        else:
            xt_apply.write(netns, xt, plan, name == IPTC)
    except BaseException as exc:
        problems = [] if residue else _rollback_xtables(netns, xt, plan, list(plan.families()), before)
        problems += _safely(lambda: amb_routing.undo(netns, changes))
        problems += _safely(lambda: _destroy_sets(netns, made))
        if problems and isinstance(exc, ApplyError):
            raise ApplyError(f"{exc}; rollback incomplete ({'; '.join(problems)}): run meshnet cleanup") from None
        raise
    _drop_stale_v6_routing(netns, spec, host)
    if residue:
        return ApplyResult(name, True, f"reconciled {netns.label}: {len(drift)} difference(s) replaced by the spec "
                                       f"(one restore per family)")
    count = sum(len(plan.ops(f)) for f in plan.families())
    return ApplyResult(name, True, f"applied {count} ambient rules with {name} in {netns.label}")


def _already_applied(netns: Netns, spec: AmbientSpec, xt: Xtables, name: str, host: bool,
                     before: dict[Family, str]) -> ApplyResult:
    """The rules match: restore missing routing/sets; remove what an interrupted writer left
    (Istio's DROP guardrails, an earlier IPv6 spec's routing)."""
    from meshnet.apply.backends.xt_backend import drop_leftover_guardrails

    changes = routing.Changes()
    made = _prerequisites(netns, spec, host, changes)
    unblocked = drop_leftover_guardrails(netns, xt, before)
    if unblocked and xt.variant == "nft":
        from meshnet.apply.backends.nft_prune import prune_empty

        for fam in (4, 6):
            prune_empty(netns, fam, {"filter": set(xt_apply.GUARDRAIL_CHAINS)})
    stale = _drop_stale_v6_routing(netns, spec, host)
    what = "; restored missing routing/sets" if made or not changes.empty else ""
    what += "; removed leftover DROP guardrails" if unblocked else ""
    what += "; removed stale IPv6 routing" if stale else ""
    changed = bool(made or not changes.empty or unblocked or stale)
    verdict = "repaired" if changed else "no change"
    return ApplyResult(name, changed, f"already applied in {netns.label}: {verdict}{what}")


def _drop_stale_v6_routing(netns: Netns, spec: AmbientSpec, host: bool) -> list[str]:
    """An IPv4-only spec: the IPv6 routing an earlier IPv6 spec added goes, after the rules that used it."""
    if host or spec.enable_ipv6:
        return []
    return amb_routing.remove_all(netns, families=(amb_routing.AF_INET6,))


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
            stale = _drop_stale_v6_routing(netns, spec, host)
            what = "; restored missing routing" if not changes.empty else ""
            what += "; removed stale IPv6 routing" if stale else ""
            changed = not changes.empty or bool(stale)
            return ApplyResult(NFTABLES, changed, f"already applied in {netns.label}: no change{what}")
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
    _drop_stale_v6_routing(netns, spec, host)
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

    removed: list[str] = []
    cleaned: list[str] = []
    for xt in (Xtables("legacy"), Xtables("nft")):
        if not xt.available():
            continue
        lines = xt_apply.cleanup(netns, xt)  # both families (and leftover guardrails) in one spawn
        if lines:
            removed += lines
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
        texts: dict[Family, str] = {fam: xt.save(netns, fam) for fam in (4, 6)}
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
