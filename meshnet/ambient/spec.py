"""The ambient spec: istio-cni's AmbientConfig plus the pod's PodLevelOverrides, as one validated value.

Readers: command-line flags (`ambient.cli`), YAML mappings (`spec_from_mapping`) and pod
annotations (`overrides_from_annotations`). Constants are istio-cni's (cni/pkg/config).
"""

from __future__ import annotations

from meshnet.errors import SpecError
from meshnet.lite.records import dataclass, fields, replace
from meshnet.spec import values as v

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# Marks and ports ztunnel and the node agent agree on (cni/pkg/config/config.go).
ZTUNNEL_MARK = 0x539  # ztunnel sets SO_MARK 1337 on its own sockets
ZTUNNEL_MASK = 0xFFF
TPROXY_MARK = 0x111  # connmark of connections ztunnel accepted; routes replies through lo
TPROXY_MASK = 0xFFF
RESTORE_MASK = 0xFFFFFFFF
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
INBOUND_HBONE_PORT = 15008
DNS_PORT = 15053
DNS_CT_ZONE = 1
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_IPSET = "istio-inpod-probes"
DEFAULT_SNAT_V4 = "169.254.7.127"
DEFAULT_SNAT_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
DNS_PROXY_VALUES = ("unset", "enabled", "disabled")

# Pod annotations istio-cni reads (cni/pkg/nodeagent/net.go) and the enrolment label.
A_DNS_CAPTURE = "ambient.istio.io/dns-capture"
A_REROUTE_VIRT = "istio.io/reroute-virtual-interfaces"
A_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
L_DATAPLANE_MODE = "istio.io/dataplane-mode"


@dataclass(frozen=True)
class AmbientSpec:
    # Node-wide (AmbientConfig).
    redirect_dns: bool = False
    enable_ipv6: bool = False
    host_probe_snat: str = DEFAULT_SNAT_V4
    host_probe_snat_v6: str = DEFAULT_SNAT_V6
    kubelet_uid: str = ""  # nft host rules match kubelet's uid (Istio reads it from /proc)
    # Per pod (PodLevelOverrides).
    ingress_mode: bool = False
    dns_proxy: str = "unset"
    virtual_interfaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_ambient(self)

    @property
    def dns_effective(self) -> bool:
        """The pod's DNS override wins over the node-wide setting (AppendInpodRules)."""
        if self.dns_proxy == "enabled":
            return True
        if self.dns_proxy == "disabled":
            return False
        return self.redirect_dns

    def with_changes(self, **changes: Any) -> AmbientSpec:
        return replace(self, **changes)

    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.enable_ipv6 else (4,)


AMBIENT_FIELDS = {f.name for f in fields(AmbientSpec)}


def _address(field: str, value: str, version: int) -> str:
    """One host address of the given family, written as Go's netip.Addr.String() writes it."""
    import ipaddress

    if not isinstance(value, str) or "/" in value:
        raise SpecError(field, value, f"expected an IPv{version} address")
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise SpecError(field, value, f"expected an IPv{version} address") from None
    if addr.version != version:
        raise SpecError(field, value, f"expected an IPv{version} address")
    return addr.compressed


def check_ambient(spec: AmbientSpec) -> None:
    """Every field, so a spec made in Python is as safe as one from flags."""
    for name in ("redirect_dns", "enable_ipv6", "ingress_mode"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(name, getattr(spec, name), "expected true or false")
    if _address("host_probe_snat", spec.host_probe_snat, 4) != spec.host_probe_snat:
        raise SpecError("host_probe_snat", spec.host_probe_snat, "address must be written in canonical form")
    if _address("host_probe_snat_v6", spec.host_probe_snat_v6, 6) != spec.host_probe_snat_v6:
        raise SpecError("host_probe_snat_v6", spec.host_probe_snat_v6, "address must be written in canonical form")
    if spec.dns_proxy not in DNS_PROXY_VALUES:
        raise SpecError("dns_proxy", spec.dns_proxy, "expected enabled, disabled or unset")
    if not isinstance(spec.virtual_interfaces, tuple) or any(
            not isinstance(i, str) or "," in i for i in spec.virtual_interfaces):
        raise SpecError("virtual_interfaces", spec.virtual_interfaces, "expected a list of interface names")
    v.parse_interfaces("virtual_interfaces", ",".join(spec.virtual_interfaces))
    if spec.kubelet_uid:
        v.parse_int("kubelet_uid", spec.kubelet_uid, 0, 0xFFFFFFFE)
        if str(int(spec.kubelet_uid)) != spec.kubelet_uid:
            raise SpecError("kubelet_uid", spec.kubelet_uid, "expected a decimal uid")


def parse_address(field: str, value: str, version: int) -> str:
    return _address(field, value, version)


def parse_dns_proxy(field: str, value: str) -> str:
    text = str(value).strip().lower()
    if text not in DNS_PROXY_VALUES:
        raise SpecError(field, value, "expected enabled, disabled or unset")
    return text


def go_bool(field: str, value: object) -> bool:
    """Go's strconv.ParseBool, which istio-cni uses for its boolean annotations."""
    if isinstance(value, bool):
        return value
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise SpecError(field, value, "expected true or false")


# ------------------------------------------------------------------------------------ YAML
def spec_from_mapping(doc: Mapping[str, Any], source: str = "ambient spec") -> AmbientSpec:
    """A mapping of AmbientSpec fields (optionally under `spec:`); unknown keys are errors."""
    if "spec" in doc and isinstance(doc.get("spec"), dict):
        doc = doc["spec"]
    unknown = sorted(set(doc) - AMBIENT_FIELDS)
    if unknown:
        raise SpecError(f"{source} key", unknown[0], f"unknown field (known: {', '.join(sorted(AMBIENT_FIELDS))})")
    kw: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("redirect_dns", "enable_ipv6", "ingress_mode"):
            kw[key] = v.parse_bool(key, value if isinstance(value, bool) else _text(key, value))
        elif key == "host_probe_snat":
            kw[key] = _address(key, _text(key, value), 4)
        elif key == "host_probe_snat_v6":
            kw[key] = _address(key, _text(key, value), 6)
        elif key == "dns_proxy":
            kw[key] = parse_dns_proxy(key, _text(key, value) or "unset")
        elif key == "virtual_interfaces":
            kw[key] = v.parse_interfaces(key, _text(key, value))
        elif key == "kubelet_uid":
            text = _text(key, value)
            kw[key] = str(v.parse_int(key, text, 0, 0xFFFFFFFE)) if text else ""
    return AmbientSpec(**kw)


def _text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        if not all(isinstance(i, str | int) and not isinstance(i, bool) for i in value):
            raise SpecError(key, value, "list items must be strings or numbers")
        return ",".join(str(i) for i in value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise SpecError(key, value, "expected a string, a number or a list")


def load_spec_file(path: str) -> AmbientSpec:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise SpecError("ambient spec file", path, exc.strerror or str(exc)) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise SpecError("ambient spec file", path, f"not valid YAML ({first})") from None
    if not isinstance(doc, dict):
        raise SpecError("ambient spec file", path, "expected a mapping of ambient spec fields")
    return spec_from_mapping(doc, source=path)


# ------------------------------------------------------------------------------------ pods
def overrides_from_annotations(base: AmbientSpec, annotations: Mapping[str, str]) -> AmbientSpec:
    """istio-cni's getPodLevelTrafficOverrides on top of `base` (an absent annotation keeps base's value).

    Istio logs and ignores a non-boolean value; meshnet refuses it with one line, as it does for
    every sidecar annotation, so a typo cannot silently change what is captured.
    """
    changes: dict[str, Any] = {}
    for key in (A_BYPASS_INBOUND, A_DNS_CAPTURE, A_REROUTE_VIRT):
        if key in annotations and not isinstance(annotations[key], str):
            raise SpecError(f"annotation {key}", annotations[key], "must be a string")
    if A_BYPASS_INBOUND in annotations:
        changes["ingress_mode"] = go_bool(f"annotation {A_BYPASS_INBOUND}", annotations[A_BYPASS_INBOUND])
    if A_DNS_CAPTURE in annotations:
        on = go_bool(f"annotation {A_DNS_CAPTURE}", annotations[A_DNS_CAPTURE])
        changes["dns_proxy"] = "enabled" if on else "disabled"
    if A_REROUTE_VIRT in annotations:
        changes["virtual_interfaces"] = v.parse_interfaces(f"annotation {A_REROUTE_VIRT}", annotations[A_REROUTE_VIRT])
    return base.with_changes(**changes)


def enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """Ambient when the pod or its namespace says so, unless the pod opts out (`none`)."""
    pod_mode = pod_labels.get(L_DATAPLANE_MODE)
    if pod_mode is not None and pod_mode != "ambient":
        return False
    return pod_mode == "ambient" or namespace_labels.get(L_DATAPLANE_MODE) == "ambient"
