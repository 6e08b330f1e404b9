"""ADD / DEL / CHECK / STATUS / GC: pod facts -> Spec -> applier, errors as CniError."""

from __future__ import annotations

import os

from meshnet.apply.netns import Netns, NetnsError
from meshnet.cni.config import PluginConfig
from meshnet.cni.inputs import check_netns_path, is_own_netns, pod_netns, prev_result_addresses
from meshnet.cni.log import Log
from meshnet.cni.pod import PodInfo, skip_reason
from meshnet.cni.protocol import (
    E_APPLY_FAILED,
    E_DRIFT,
    E_INCOMPATIBLE_VERSION,
    E_INVALID_POD_SPEC,
    CniEnv,
    CniError,
    passthrough_result,
    version_at_least,
)
from meshnet.cni.source import load_pod
from meshnet.errors import MeshnetError, SpecError
from meshnet.spec.annotations import spec_from_annotations
from meshnet.spec.spec import Spec

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def _netns(env: CniEnv) -> Netns:
    return pod_netns(env.netns)


def _pod_spec(pod: PodInfo, config: PluginConfig) -> Spec:
    return spec_from_annotations(pod.annotations, defaults=config.defaults, proxy_uid=pod.proxy_uid,
                                 proxy_gid=pod.proxy_gid, proxy_env=pod.proxy_env)


def _skip_for_check(pod: PodInfo, config: PluginConfig) -> str | None:
    try:
        return skip_reason(pod, config)
    except SpecError as exc:
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None


def _cleanup_quietly(netns: Netns, log: Log) -> None:
    """After a failed ADD: leave no interception state, whatever a previous ADD left."""
    from meshnet.apply.applier import cleanup

    try:
        cleanup(netns)
    except Exception as exc:  # the original error is what the runtime must see
        log.error("cleanup after a failed ADD failed", error=str(exc))


def cmd_add(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> dict[str, Any] | None:
    addresses = prev_result_addresses(doc)
    check_netns_path(env.netns)
    if os.path.exists(env.netns):
        _netns(env)  # a namespace given must be a pod's: never the plugin's own, even for a skipped pod
    pod = load_pod(env, config, doc, log)
    if config.ambient is not None and pod.namespace not in config.exclude_namespaces:
        from meshnet.ambient.cni import pod_enrolled

        if pod_enrolled(pod, config.ambient, config):
            return _add_ambient(env, config, doc, log, pod, addresses)
    try:
        reason = skip_reason(pod, config)
    except SpecError as exc:  # an invalid interception mode: fail, and drop what an earlier ADD left
        if os.path.exists(env.netns):
            _cleanup_quietly(_netns(env), log)  # _netns refuses the plugin's own namespace
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    if reason:  # a skipped pod's namespace is not even opened
        log.info("skipped", reason=reason)
        return passthrough_result(doc, config.cni_version)
    netns = _netns(env)
    from meshnet.apply.applier import apply_spec, prepare
    from meshnet.state.addresses import ipv6_from_addresses

    try:
        base = _pod_spec(pod, config)
        # The main plugin's result lists the pod's addresses: Istio's IPv6 rule needs no netns read.
        ipv6 = ipv6_from_addresses(addresses, base.dual_stack)
        if ipv6 is None:
            spec, backend = prepare(netns, base, config.backend)
        else:
            spec, backend = base.with_changes(enable_ipv6=ipv6), config.backend
    except SpecError as exc:
        _cleanup_quietly(netns, log)
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    except MeshnetError as exc:  # e.g. no usable address to decide on IPv6
        _cleanup_quietly(netns, log)
        raise CniError(E_APPLY_FAILED, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    try:
        # reconcile: at sandbox creation the pod's annotations are the truth; stale rules from an
        # earlier ADD with other annotations are replaced (same rules again: a no-op).
        result = apply_spec(netns, spec, backend=backend, reconcile=True)
    except MeshnetError as exc:
        _cleanup_quietly(netns, log)
        raise CniError(E_APPLY_FAILED, f"cannot program pod {pod.namespace}/{pod.name}: {exc}") from None
    from meshnet.apply.collision_prevention import enforce

    prevention = enforce(netns, spec)  # on the node the plugin can always write the pod's sysctl
    if prevention.warning:
        log.warn("five-tuple collision prevention not in place", error=prevention.warning)
    log.info("interception programmed", mode=spec.mode, ipv6=spec.enable_ipv6, backend=result.backend,
             changed=result.changed, early_demux_off=prevention.changed)
    return passthrough_result(doc, config.cni_version)


def _add_ambient(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log, pod: PodInfo,
                 addresses: list[str]) -> dict[str, Any]:
    """An enrolled ambient pod: the node agent programs it (fails when no agent runs, as istio-cni)."""
    from meshnet.ambient import cni as ambient

    netns = _netns(env)
    try:
        message = ambient.add(netns, env.container_id, pod, config.ambient, config.backend, addresses)
    except SpecError as exc:
        _cleanup_quietly(netns, log)
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    except MeshnetError as exc:
        _cleanup_quietly(netns, log)
        raise CniError(E_APPLY_FAILED, f"cannot program ambient pod {pod.namespace}/{pod.name}: {exc}") from None
    log.info("ambient redirection programmed", result=message)
    return passthrough_result(doc, config.cni_version)


def cmd_del(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> dict[str, Any] | None:
    if config.ambient is not None and env.container_id:
        from meshnet.ambient.cni import delete

        delete(env.container_id, config.ambient)  # the agent's record and the node's probe set entries
    # The spec: DEL succeeds when the namespace or the state is already gone.
    if not env.netns or (env.netns.startswith("/") and not os.path.exists(env.netns)):
        log.info("namespace already gone: nothing to remove")
        return None
    if not env.netns.startswith("/") or is_own_netns(env.netns):
        pod_netns(env.netns)  # raises the error that names what is wrong with it
    try:
        netns = Netns.resolve(env.netns)
    except NetnsError as exc:
        log.info("namespace unusable: nothing to remove", reason=str(exc))
        return None
    from meshnet.apply.applier import cleanup

    try:
        cleanup(netns)
    except MeshnetError as exc:
        if not os.path.exists(env.netns):  # removed while we were cleaning: fine
            return None
        raise CniError(E_APPLY_FAILED, f"cannot remove interception from {env.netns}: {exc}") from None
    from meshnet.apply.collision_prevention import restore_quietly

    restored = restore_quietly(netns)
    log.info("interception removed", restored=restored.message or restored.warning)
    return None


def cmd_check(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> dict[str, Any] | None:
    if not version_at_least(config.cni_version, "0.4.0"):
        raise CniError(E_INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {config.cni_version}")
    pod = load_pod(env, config, doc, log)
    if config.ambient is not None and pod.namespace not in config.exclude_namespaces:
        from meshnet.ambient.cni import pod_enrolled

        if pod_enrolled(pod, config.ambient, config):
            _check_ambient(env, config, pod)
            return None
    reason = _skip_for_check(pod, config)
    if reason:
        log.debug("check: pod not programmed", reason=reason)
        return None
    netns = _netns(env)
    from meshnet.apply.applier import spec_for_netns, status

    try:
        spec = spec_for_netns(_pod_spec(pod, config), netns)
    except SpecError as exc:
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    try:
        state = status(netns, spec)
    except MeshnetError as exc:
        raise CniError(E_APPLY_FAILED, f"cannot read the rules of pod {pod.namespace}/{pod.name}: {exc}") from None
    drift = list(state.drift)
    if drift:
        raise CniError(E_DRIFT, f"pod {pod.namespace}/{pod.name}: interception rules differ from the pod's spec "
                       f"({len(drift)} difference(s))", "\n".join(drift))
    return None


def _check_ambient(env: CniEnv, config: PluginConfig, pod: PodInfo) -> None:
    from meshnet.ambient.apply import ambient_drift
    from meshnet.ambient.spec import overrides_from_annotations

    netns = _netns(env)
    try:
        spec = overrides_from_annotations(config.ambient.spec, pod.annotations)
        drift = ambient_drift(netns, spec)
    except SpecError as exc:
        raise CniError(E_INVALID_POD_SPEC, f"pod {pod.namespace}/{pod.name}: {exc}") from None
    except MeshnetError as exc:
        raise CniError(E_APPLY_FAILED, f"cannot read the rules of pod {pod.namespace}/{pod.name}: {exc}") from None
    if drift:
        raise CniError(E_DRIFT, f"ambient pod {pod.namespace}/{pod.name}: redirection differs from its spec "
                       f"({len(drift)} difference(s))", "\n".join(drift))


def _needs_1_1(config: PluginConfig, command: str) -> None:
    if not version_at_least(config.cni_version, "1.1.0"):
        raise CniError(E_INCOMPATIBLE_VERSION, f"{command} is not defined for cniVersion {config.cni_version}")


def cmd_status(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> dict[str, Any] | None:
    _needs_1_1(config, "STATUS")
    from meshnet.cni.ready import readiness_problem

    problem = readiness_problem(config.backend)
    if problem:
        raise CniError(50, f"meshnet-cni cannot service ADD: {problem}")
    return None


def cmd_gc(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> dict[str, Any] | None:
    # All state lives inside pod namespaces and dies with them: nothing to collect.
    _needs_1_1(config, "GC")
    return None


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}
