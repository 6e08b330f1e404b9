"""Repair in place: meshed pods on this node that lack their rules (or have drifted ones) are
reconciled inside their running sandbox, without a restart and without the Kubernetes API.

The race this closes: a pod whose sandbox was created before meshnet-cni was in the conflist (node
reboot, DaemonSet upgrade, a conflist rewritten by another CNI) runs with no interception. The CRI
gives every sandbox's namespace path, name and annotations on the node itself; each pod is decided
exactly as CNI ADD decides it (meshnet.cni.pod.skip_reason, the same annotations -> Spec), and a pod
that should be meshed but is not gets `apply --reconcile` under its namespace writer lock.

Safety: the lock is only tried, never waited for (a pod whose CNI ADD/DEL holds it is `busy` and
retried next interval); a pod that vanishes mid-repair is `gone`; invalid annotations are reported
(`invalid`), never guessed; at most `max_repairs` pods are changed per pass; pods that should not be
meshed are never touched, and foreign rules survive a reconcile (the applier only rewrites ISTIO_*).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from meshnet.errors import MeshnetError, SpecError
from meshnet.lite.records import dataclass, field

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from meshnet.apply.applier import Status
    from meshnet.apply.netns import Netns
    from meshnet.cni.config import PluginConfig
    from meshnet.spec.spec import Spec

REASONS = ("missing", "drift", "partial")
DEFAULT_MAX_REPAIRS = 10


@dataclass
class Row:
    """One pod's outcome: action repaired|would-repair|ok|skipped|invalid|busy|gone|deferred|failed."""

    pod: str
    sandbox: str
    netns: str
    action: str
    reason: str = ""
    detail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "sandbox": self.sandbox, "netns": self.netns, "action": self.action,
                "reason": self.reason, "detail": self.detail}

    def line(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        first = f": {self.detail[0]}" if self.detail else ""
        return f"{self.pod} {self.action}{why}{first}"


def classify(netns: Netns, spec: Spec, state: Status) -> str | None:
    """None when the pod's rules are what CNI ADD would program, else missing, partial or drift.

    partial = an interrupted write: rules in one address family or table but not another, leftover
    guardrails, or the rules without their TPROXY routing / ::6; drift = present but different.
    """
    if not state.drift:
        return None
    if not state.backends:
        return "missing"
    if any("routing missing" in d or "::6/128 missing" in d for d in state.drift):
        return "partial"
    if any(b.startswith("iptables-") for b in state.backends) and _half_written(netns, spec, state.backends):
        return "partial"
    return "drift"


def _half_written(netns: Netns, spec: Spec, backends: Iterable[str]) -> bool:
    from meshnet.apply.backends.guardrails import find_guardrails
    from meshnet.apply.backends.xtables import Xtables, strip_counters
    from meshnet.plan.istio_builder import build_iptables
    from meshnet.state.parse_save import parse_save

    families = build_iptables(spec).families()
    for backend in backends:
        if not backend.startswith("iptables-"):
            continue
        xt = Xtables(backend.removeprefix("iptables-"))
        have = []
        for fam in families:
            text = strip_counters(xt.save(netns, fam))
            if find_guardrails(text):
                return True
            have.append(bool(parse_save(text, fam).istio_chains()))
        if any(have) and not all(have):
            return True
    return False


def pod_info(sandbox: Mapping[str, Any]) -> Any:
    """The CNI plugin's view of a pod, from the CRI sandbox (annotations and labels are the pod's)."""
    from meshnet.cni.pod import PodInfo

    labels = {k: v for k, v in (sandbox.get("labels") or {}).items() if not k.startswith("io.kubernetes.")}
    return PodInfo(namespace=sandbox.get("namespace") or "", name=sandbox.get("name") or "",
                   annotations=dict(sandbox.get("annotations") or {}), labels=labels)


def repair_pod(sandbox: Mapping[str, Any], config: PluginConfig, *, dry_run: bool, allow_change: bool,
               still_ready: Callable[[str], bool] | None = None) -> Row:
    """Decide and (unless dry_run or not allow_change) reconcile one sandbox.

    A failure on a pod the runtime no longer reports READY (stopped or removed meanwhile: its CNI DEL
    may be taking eth0 or the namespace away) is `gone`, not `failed`.
    """
    row = _repair_pod(sandbox, config, dry_run=dry_run, allow_change=allow_change)
    if row.action == "failed" and still_ready is not None and not still_ready(row.sandbox):
        row.action = "gone"
        row.detail.append("the pod was stopped or removed while it was being repaired")
    return row


def _repair_pod(sandbox: Mapping[str, Any], config: PluginConfig, *, dry_run: bool, allow_change: bool) -> Row:
    from meshnet.apply.applier import apply_spec, prepare, status
    from meshnet.apply.backends import nslock
    from meshnet.apply.netns import Netns, NetnsError
    from meshnet.cni.pod import skip_reason
    from meshnet.spec.annotations import spec_from_annotations

    pod = pod_info(sandbox)
    row = Row(f"{pod.namespace}/{pod.name}", str(sandbox.get("id", "")), str(sandbox.get("netns") or ""), "ok")
    try:
        reason = skip_reason(pod, config)
    except SpecError as exc:
        return _set(row, "invalid", "", str(exc))
    if reason:
        return _set(row, "skipped", "", reason)
    try:
        base = spec_from_annotations(pod.annotations, defaults=config.defaults)
    except SpecError as exc:
        return _set(row, "invalid", "", str(exc))
    if not row.netns:
        return _set(row, "gone", "", "the runtime reports no network namespace for this sandbox")
    try:
        netns = Netns.resolve(row.netns)
        # Never waits: a CNI ADD/DEL (or another repair) holding the lock owns the pod right now.
        with nslock.locked(netns, wait=0.0):
            spec, backend = prepare(netns, base, config.backend)
            why = classify(netns, spec, status(netns, spec))
            if why is None:
                return row
            row.reason = why
            if dry_run:
                return _set(row, "would-repair", why, "dry run: nothing changed")
            if not allow_change:
                return _set(row, "deferred", why, "the per-pass repair limit is reached: next pass")
            result = apply_spec(netns, spec, backend=backend, reconcile=True)
            _collision_prevention(netns, spec)
            return _set(row, "repaired", why, result.message)
    except NetnsError as exc:
        return _set(row, "gone", row.reason, str(exc))
    except MeshnetError as exc:
        if not os.path.exists(row.netns):
            return _set(row, "gone", row.reason, "the pod was deleted while it was being repaired")
        if "namespace lock" in str(exc):
            return _set(row, "busy", row.reason, "CNI ADD/DEL (or another writer) holds the pod's lock: next pass")
        return _set(row, "failed", row.reason, str(exc))


def _collision_prevention(netns: Netns, spec: Spec) -> None:
    from meshnet.apply.collision_prevention import enforce

    enforce(netns, spec)  # what CNI ADD does after the rules


def _set(row: Row, action: str, reason: str, detail: str) -> Row:
    row.action, row.reason = action, reason
    row.detail.append(detail)
    return row


def repair_all(sandboxes: Iterable[Mapping[str, Any]], config: PluginConfig, *, dry_run: bool = False,
               max_repairs: int = DEFAULT_MAX_REPAIRS, log: Callable[[str], object] | None = None,
               still_ready: Callable[[str], bool] | None = None) -> list[Row]:
    """One pass over the node's sandboxes; at most max_repairs pods changed."""
    rows: list[Row] = []
    changed = 0
    for sandbox in sandboxes:
        row = repair_pod(sandbox, config, dry_run=dry_run, allow_change=changed < max_repairs,
                         still_ready=still_ready)
        if row.action == "repaired":
            changed += 1
        if log is not None and row.action not in ("ok", "skipped"):
            log(row.line())
        rows.append(row)
    return rows


def exit_code(rows: Iterable[Row]) -> int:
    """0 nothing to do or all repaired, 1 something still needs repair or failed."""
    return 1 if any(r.action in ("would-repair", "invalid", "busy", "deferred", "failed") for r in rows) else 0


def load_config(conflist: str | None, conf_dir: str | None) -> PluginConfig:
    """meshnet-cni's entry of the node's conflist (the config CNI ADD uses); its defaults when the
    plugin is not (yet) in any conflist, which is exactly the race being repaired."""
    import json

    from meshnet.cni.config import parse_config
    from meshnet.cni.protocol import CniError

    paths: list[str] = []
    if conflist:
        paths = [conflist]
    else:
        directory = conf_dir or "/etc/cni/net.d"
        try:
            paths = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".conflist"))
        except OSError:
            paths = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            if conflist:
                raise MeshnetError(f"cannot read {path}: {exc}") from None
            continue
        for plugin in doc.get("plugins") or [] if isinstance(doc, dict) else []:
            if isinstance(plugin, dict) and plugin.get("type") == "meshnet-cni":
                try:
                    return parse_config({**plugin, "cniVersion": doc.get("cniVersion", "1.0.0")})
                except CniError as exc:
                    raise MeshnetError(f"{path}: {exc.msg}") from None
    if conflist:
        raise MeshnetError(f"{conflist} has no meshnet-cni plugin")
    return parse_config({"cniVersion": "1.0.0"})
