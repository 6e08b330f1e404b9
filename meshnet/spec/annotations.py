"""Kubernetes pod annotations -> Spec, on top of istio-cni's sidecar defaults (cni/pkg/plugin/redirect.go)."""

from __future__ import annotations

from meshnet.errors import SpecError
from meshnet.lite import jsonlite as json  # the C accelerator only: `import json` costs ~8 ms per pod
from meshnet.lite.records import dataclass
from meshnet.spec import values as v
from meshnet.spec.spec import Spec, mode_for

TYPE_CHECKING = False  # collections.abc/typing imports cost ms at pod start: type checkers only
if TYPE_CHECKING:
    from collections.abc import Mapping

A_MODE = "sidecar.istio.io/interceptionMode"
A_INCLUDE_CIDRS = "traffic.sidecar.istio.io/includeOutboundIPRanges"
A_EXCLUDE_CIDRS = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
A_INCLUDE_IN_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
A_EXCLUDE_IN_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
A_INCLUDE_OUT_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
A_EXCLUDE_OUT_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
A_EXCLUDE_IFACES = "traffic.sidecar.istio.io/excludeInterfaces"
A_KUBEVIRT = "traffic.sidecar.istio.io/kubevirtInterfaces"
A_REROUTE_VIRT = "istio.io/reroute-virtual-interfaces"
# meshnet's own: auto|off|early-demux|tproxy (meshnet/apply/collision_prevention.py)
A_PREVENT_COLLISION = "meshnet.io/prevent-tuple-collision"
A_PROXY_CONFIG = "proxy.istio.io/config"
A_INJECT = "sidecar.istio.io/inject"
A_STATUS = "sidecar.istio.io/status"
KNOWN_ANNOTATIONS = frozenset({
    A_MODE, A_INCLUDE_CIDRS, A_EXCLUDE_CIDRS, A_INCLUDE_IN_PORTS, A_EXCLUDE_IN_PORTS, A_INCLUDE_OUT_PORTS,
    A_EXCLUDE_OUT_PORTS, A_EXCLUDE_IFACES, A_KUBEVIRT, A_REROUTE_VIRT, A_PROXY_CONFIG, A_INJECT, A_STATUS,
    A_PREVENT_COLLISION,
})

# istio-cni defaults (redirect.go).
DEFAULT_EXCLUDE_PORT = "15020"  # the agent's status port
ALWAYS_EXCLUDED_INBOUND = "15020,15021,15090"


@dataclass(frozen=True)
class CniDefaults:
    """What the plugin configuration may override (Istio's values by default)."""

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uid: int = 1337
    proxy_gid: int = 1337


def _get(annotations: Mapping[str, str], key: str, default: str) -> str:
    value = annotations.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SpecError(f"annotation {key}", value, "must be a string")
    return value


def proxy_metadata(annotations: Mapping[str, str]) -> dict[str, str]:
    """proxyMetadata from `proxy.istio.io/config` (JSON or the YAML the injector also accepts)."""
    raw = annotations.get(A_PROXY_CONFIG)
    if not raw:
        return {}
    if not isinstance(raw, str):
        raise SpecError(f"annotation {A_PROXY_CONFIG}", raw, "must be a string")
    try:
        doc = json.loads(raw)  # jsonlite: too deep a document is a ValueError too
    except ValueError:
        from meshnet.spec.yaml_file import load_yaml_text  # lazy: only YAML proxy config pays for PyYAML

        try:
            doc = load_yaml_text(raw, f"annotation {A_PROXY_CONFIG}", raw)
        except SpecError as exc:
            raise SpecError(f"annotation {A_PROXY_CONFIG}", raw, f"neither JSON nor YAML: {exc.reason}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"annotation {A_PROXY_CONFIG}", raw, "expected a mapping")
    meta = doc.get("proxyMetadata") or {}
    if not isinstance(meta, dict):
        raise SpecError(f"annotation {A_PROXY_CONFIG}", raw, "proxyMetadata must be a mapping")
    return {str(k): str(val) for k, val in meta.items()}


def interception_mode(annotations: Mapping[str, str]) -> str:
    mode = _get(annotations, A_MODE, "REDIRECT")
    if mode not in ("REDIRECT", "TPROXY", "NONE"):
        raise SpecError(f"annotation {A_MODE}", mode, "expected REDIRECT, TPROXY or NONE")
    return mode


def _dedup(ports: tuple[int, ...]) -> tuple[int, ...]:
    seen: list[int] = []
    for port in ports:
        if port not in seen:
            seen.append(port)
    return tuple(seen)


def spec_from_annotations(annotations: Mapping[str, str], *, defaults: CniDefaults | None = None,
                          proxy_uid: int | None = None, proxy_gid: int | None = None,
                          proxy_env: Mapping[str, str] | None = None, enable_ipv6: bool = False) -> Spec:
    """The spec istio-cni would program for a sidecar pod. Mode NONE is the caller's to skip."""
    defaults = defaults or CniDefaults()
    mode = interception_mode(annotations)
    if mode == "NONE":
        raise SpecError(f"annotation {A_MODE}", mode, "interception is disabled for this pod")
    env = dict(proxy_metadata(annotations))
    env.update(proxy_env or {})

    def field(key: str) -> str:
        return f"annotation {key}"

    out_wild, include_cidrs = v.parse_cidrs(field(A_INCLUDE_CIDRS), _get(annotations, A_INCLUDE_CIDRS, "*"),
                                            allow_wildcard=True)
    _, exclude_cidrs = v.parse_cidrs(field(A_EXCLUDE_CIDRS), _get(annotations, A_EXCLUDE_CIDRS, ""),
                                     allow_wildcard=False)
    in_wild, in_ports = v.parse_ports_or_wildcard(field(A_INCLUDE_IN_PORTS), _get(annotations, A_INCLUDE_IN_PORTS, "*"))
    excl_in = _get(annotations, A_EXCLUDE_IN_PORTS, DEFAULT_EXCLUDE_PORT)
    exclude_in = _dedup(v.parse_ports(field(A_EXCLUDE_IN_PORTS), excl_in)
                        + v.parse_ports("default", ALWAYS_EXCLUDED_INBOUND))
    reroute = annotations.get(A_REROUTE_VIRT)
    if reroute is None:
        reroute = _get(annotations, A_KUBEVIRT, "")
    uid = proxy_uid if proxy_uid else defaults.proxy_uid
    gid = proxy_gid if proxy_gid else defaults.proxy_gid
    dns = _env_bool(env, "ISTIO_META_DNS_CAPTURE")
    prevention = v.parse_prevention(field(A_PREVENT_COLLISION), _get(annotations, A_PREVENT_COLLISION, "auto"))
    mode = mode_for(mode, prevention)
    return Spec(
        proxy_port=defaults.proxy_port,
        inbound_capture_port=defaults.inbound_capture_port,
        inbound_tunnel_port=defaults.inbound_tunnel_port,
        proxy_uids=(str(uid),),
        proxy_gids=(str(gid),),
        mode="TPROXY" if mode == "TPROXY" else "REDIRECT",
        inbound_ports_wildcard=in_wild,
        inbound_ports=in_ports,
        inbound_exclude_ports=exclude_in,
        outbound_cidrs_wildcard=out_wild,
        outbound_include_cidrs=include_cidrs,
        outbound_exclude_cidrs=exclude_cidrs,
        outbound_include_ports=v.parse_ports(field(A_INCLUDE_OUT_PORTS), _get(annotations, A_INCLUDE_OUT_PORTS, "")),
        outbound_exclude_ports=v.parse_ports(field(A_EXCLUDE_OUT_PORTS),
                                             _get(annotations, A_EXCLUDE_OUT_PORTS, DEFAULT_EXCLUDE_PORT)),
        exclude_interfaces=v.parse_interfaces(field(A_EXCLUDE_IFACES), _get(annotations, A_EXCLUDE_IFACES, "")),
        kube_virt_interfaces=v.parse_interfaces(field(A_REROUTE_VIRT), reroute),
        # istio-cni cannot know the pod's resolv.conf servers up front, so DNS capture is capture-all.
        redirect_dns=dns,
        capture_all_dns=dns,
        drop_invalid=_env_bool(env, "INVALID_DROP"),
        dual_stack=_env_bool(env, "ISTIO_DUAL_STACK"),
        enable_ipv6=enable_ipv6,
        prevent_tuple_collision=prevention,
    )


def _env_bool(env: Mapping[str, str], key: str) -> bool:
    if key not in env:
        return False
    return v.parse_bool(f"proxyMetadata {key}", env[key])


def parse_annotation_args(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` command-line pairs -> mapping."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError("--annotation", pair, "expected KEY=VALUE")
        out[key] = value
    return out
