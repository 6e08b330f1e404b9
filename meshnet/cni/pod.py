"""What the plugin knows about a pod, and istio-cni's rules for leaving a pod alone."""

from __future__ import annotations

from meshnet.cni.config import PluginConfig
from meshnet.lite.records import dataclass, field
from meshnet.spec.annotations import A_INJECT, A_STATUS, interception_mode

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PROXY_CONTAINER = "istio-proxy"
INIT_CONTAINER = "istio-init"


@dataclass(frozen=True)
class PodInfo:
    """Pod facts. labels/containers are None when the source (runtime annotations) cannot know them."""

    namespace: str
    name: str
    annotations: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] | None = None
    proxy_uid: int | None = None
    proxy_gid: int | None = None
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    # Only known from the API: (has istio-proxy, has istio-init, proxy type from its args).
    containers_known: bool = False
    has_proxy: bool = False
    has_init: bool = False
    proxy_type: str = "sidecar"


def _go_false(value: object) -> bool:
    """strconv.ParseBool(value) == false (an unparsable value is not 'false' for Istio)."""
    return isinstance(value, str) and value in ("0", "f", "F", "false", "FALSE", "False")


def skip_reason(pod: PodInfo, config: PluginConfig) -> str | None:
    """Why istio-cni would not program this pod, or None to program it.

    May raise SpecError for an invalid interception mode: that is a bad annotation, not a skip.
    """
    if not pod.namespace or not pod.name:
        return "no Kubernetes pod arguments (K8S_POD_NAMESPACE/K8S_POD_NAME)"
    if pod.namespace in config.exclude_namespaces:
        return f"namespace {pod.namespace!r} is excluded"
    if pod.containers_known:
        if pod.has_init:
            return f"pod has an {INIT_CONTAINER} container (rules are set up by it)"
        if not pod.has_proxy:
            return f"pod has no {PROXY_CONTAINER} container"
        if pod.proxy_env.get("DISABLE_ENVOY", "").lower() == "true":
            return "istio-proxy has DISABLE_ENVOY=true"
        if pod.proxy_type != "sidecar":
            return f"istio-proxy runs as {pod.proxy_type!r}, not a sidecar"
    # The label wins over the annotation when it is known (Istio reads both from the API).
    if pod.labels is not None and A_INJECT in pod.labels:
        if _go_false(pod.labels[A_INJECT]):
            return f"label {A_INJECT}={pod.labels[A_INJECT]}"
    elif _go_false(pod.annotations.get(A_INJECT)):
        return f"annotation {A_INJECT}={pod.annotations[A_INJECT]}"
    if A_STATUS not in pod.annotations:
        return f"no {A_STATUS} annotation (not an injected pod)"
    if interception_mode(pod.annotations) == "NONE":
        return "interception mode NONE"
    return None


def _str_map(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): v if isinstance(v, str) else str(v) for k, v in raw.items()}


def _int_or_none(raw: object) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else None


def pod_from_api(obj: Mapping[str, Any], namespace: str, name: str) -> PodInfo:
    """A Pod object (GET /api/v1/namespaces/NS/pods/NAME) -> PodInfo."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    inits = [c for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    # The proxy may be a regular container or a native sidecar (an init container).
    proxy = next((c for c in containers + inits if c.get("name") == PROXY_CONTAINER), None)
    uid = gid = None
    env: dict[str, str] = {}
    proxy_type = "sidecar"
    if proxy is not None:
        ctx = proxy.get("securityContext") or {}
        uid, gid = _int_or_none(ctx.get("runAsUser")), _int_or_none(ctx.get("runAsGroup"))
        for item in proxy.get("env") or []:
            # valueFrom (secrets, field refs) cannot be resolved here; Istio reads .value too.
            if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("value"), str):
                env[item["name"]] = item["value"]
        args = [a for a in proxy.get("args") or [] if isinstance(a, str)]
        if len(args) >= 2 and args[0] == "proxy":
            proxy_type = args[1]
    return PodInfo(
        namespace=namespace,
        name=name,
        annotations=_str_map(meta.get("annotations")),
        labels=_str_map(meta.get("labels")),
        proxy_uid=uid,
        proxy_gid=gid,
        proxy_env=env,
        containers_known=True,
        has_proxy=proxy is not None,
        has_init=any(c.get("name") == INIT_CONTAINER for c in inits),
        proxy_type=proxy_type,
    )
