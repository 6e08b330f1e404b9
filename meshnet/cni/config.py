"""The plugin's network configuration (the meshnet-cni entry of a conflist), validated.

Unknown fields are ignored (the runtime adds its own: name, type, prevResult, runtimeConfig ...);
a known field with a bad value is an invalid-config CNI error naming the field.
"""

from __future__ import annotations

from meshnet.cni.protocol import E_INVALID_CONFIG, CniError, check_version
from meshnet.errors import quote
from meshnet.lite.records import dataclass
from meshnet.spec.annotations import CniDefaults

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

LOG_LEVELS = ("debug", "info", "warn", "error", "none")
BACKENDS = ("auto", "iptables-legacy", "iptables-nft", "nftables")  # iptc: not thread-safe, not for CNI
ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
DEFAULT_EXCLUDE_NAMESPACES = ("kube-system",)
_PORT_FIELDS = ("proxy_port", "inbound_capture_port", "inbound_tunnel_port")
_ID_FIELDS = ("proxy_uid", "proxy_gid")


@dataclass(frozen=True)
class PluginConfig:
    cni_version: str
    name: str = ""
    log_level: str = "info"
    log_file: str = ""
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDE_NAMESPACES
    backend: str = "auto"
    kubeconfig: str = ""
    k8s_timeout: float = 5.0
    defaults: CniDefaults = CniDefaults()
    ambient: Any = None  # meshnet.ambient.cni.AmbientCniConfig when the `ambient` section is given


def _ambient(doc: Mapping[str, Any]) -> Any:
    if "ambient" not in doc:
        return None  # sidecar-only nodes never import the ambient modules
    from meshnet.ambient.cni import parse_ambient
    from meshnet.errors import SpecError

    try:
        return parse_ambient(doc["ambient"])
    except SpecError as exc:
        raise CniError(E_INVALID_CONFIG, f"invalid plugin configuration: {exc}") from None


def _bad(field: str, value: object, reason: str) -> CniError:
    return CniError(E_INVALID_CONFIG, f"invalid plugin configuration field {field!r}: {quote(value)}: {reason}")


def _str(doc: Mapping[str, Any], key: str, default: str) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise _bad(key, value, "must be a string")
    return value


def _choice(doc: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(doc, key, default)
    if value not in choices:
        raise _bad(key, value, "expected one of " + ", ".join(choices))
    return value


def _int(field: str, value: object, lo: int, hi: int) -> int:
    # bool is an int in Python; JSON true is never a port.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(field, value, f"expected an integer in {lo}..{hi}")
    return value


def _defaults(doc: Mapping[str, Any]) -> CniDefaults:
    raw = doc.get("defaults", {})
    if not isinstance(raw, dict):
        raise _bad("defaults", raw, "must be an object")
    values: dict[str, int] = {}
    for key in _PORT_FIELDS:
        if key in raw:
            values[key] = _int(f"defaults.{key}", raw[key], 1, 65535)
    for key in _ID_FIELDS:
        if key in raw:
            values[key] = _int(f"defaults.{key}", raw[key], 0, 0xFFFFFFFE)
    return CniDefaults(**values)


def _namespaces(doc: Mapping[str, Any]) -> tuple[str, ...]:
    raw = doc.get("exclude_namespaces", list(DEFAULT_EXCLUDE_NAMESPACES))
    if not isinstance(raw, list) or not all(isinstance(ns, str) and ns for ns in raw):
        raise _bad("exclude_namespaces", raw, "must be a list of namespace names")
    return tuple(raw)


def _timeout(doc: Mapping[str, Any]) -> float:
    raw = doc.get("k8s_timeout", 5.0)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 60:
        raise _bad("k8s_timeout", raw, "expected seconds in (0, 60]")
    return float(raw)


def parse_config(doc: Mapping[str, Any]) -> PluginConfig:
    version = check_version(doc.get("cniVersion"))
    # Istio's install-cni writes plugin_log_level; accept it as an alias.
    level_key = "log_level" if "log_level" in doc else "plugin_log_level"
    return PluginConfig(
        cni_version=version,
        name=_str(doc, "name", ""),
        log_level=_choice(doc, level_key, "info", LOG_LEVELS),
        log_file=_str(doc, "log_file", ""),
        exclude_namespaces=_namespaces(doc),
        backend=_choice(doc, "backend", "auto", BACKENDS),
        kubeconfig=_str(doc, "kubeconfig", ""),
        k8s_timeout=_timeout(doc),
        defaults=_defaults(doc),
        ambient=_ambient(doc),
    )


def runtime_annotations(doc: Mapping[str, Any]) -> dict[str, str] | None:
    """Pod annotations the runtime passed through the capability, or None if it passed none."""
    runtime = doc.get("runtimeConfig")
    if not isinstance(runtime, dict) or ANNOTATIONS_CAPABILITY not in runtime:
        return None
    raw = runtime[ANNOTATIONS_CAPABILITY]
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CniError(E_INVALID_CONFIG, f"runtimeConfig {ANNOTATIONS_CAPABILITY!r} must be an object")
    # Values are kept as given: spec_from_annotations names any non-string one in its error.
    return {str(k): v for k, v in raw.items()}
