"""YAML spec files (the profiles in profiles/) -> Spec.

Keys are the Spec field names. List fields take a YAML list or a comma string; port and CIDR
fields also take '*'. Unknown keys are errors, so a typo cannot silently disable capture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshnet.errors import SpecError
from meshnet.spec import values as v
from meshnet.spec.spec import SPEC_FIELDS, Spec, mode_for

_PORT_FIELDS = ("inbound_exclude_ports", "outbound_include_ports", "outbound_exclude_ports")
_IFACE_FIELDS = ("exclude_interfaces", "kube_virt_interfaces")
_INT_FIELDS = {"proxy_port": (1, 65535), "inbound_capture_port": (1, 65535), "inbound_tunnel_port": (1, 65535),
               "tproxy_mark": (v.MARK_MIN, v.MARK_MAX),
               "tproxy_route_table": (v.ROUTE_TABLE_MIN, v.ROUTE_TABLE_MAX)}
_BOOL_FIELDS = ("redirect_dns", "capture_all_dns", "drop_invalid", "dual_stack", "enable_ipv6")


def _as_text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise SpecError(key, value, "list items must be strings or numbers")
        return ",".join(str(i) for i in value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise SpecError(key, value, "expected a string, a number or a list")


def spec_from_mapping(doc: Mapping[str, Any], source: str = "spec") -> Spec:
    if "spec" in doc and isinstance(doc.get("spec"), dict):  # allow a Kubernetes-style envelope
        doc = doc["spec"]
    odd = [k for k in doc if not isinstance(k, str)]
    if odd:
        raise SpecError(f"{source} key", odd[0], "field names must be strings")
    unknown = sorted(set(doc) - SPEC_FIELDS - {"inbound_ports", "outbound_include_cidrs"})
    if unknown:
        raise SpecError(f"{source} key", unknown[0], f"unknown field (known: {', '.join(sorted(SPEC_FIELDS))})")
    kw: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _BOOL_FIELDS or key in ("inbound_ports_wildcard", "outbound_cidrs_wildcard"):
            kw[key] = v.parse_bool(key, value if isinstance(value, bool) else _as_text(key, value))
            continue
        text = _as_text(key, value)
        if key == "tproxy_route_table":
            kw[key] = v.parse_route_table(key, text)
        elif key in _INT_FIELDS:
            kw[key] = v.parse_int(key, text, *_INT_FIELDS[key])
        elif key in _PORT_FIELDS:
            kw[key] = v.parse_ports(key, text)
        elif key in _IFACE_FIELDS:
            kw[key] = v.parse_interfaces(key, text)
        elif key == "inbound_ports":
            kw["inbound_ports_wildcard"], kw["inbound_ports"] = v.parse_ports_or_wildcard(key, text)
        elif key == "outbound_include_cidrs":
            kw["outbound_cidrs_wildcard"], kw["outbound_include_cidrs"] = v.parse_cidrs(key, text,
                                                                                       allow_wildcard=True)
        elif key == "outbound_exclude_cidrs":
            kw[key] = v.parse_cidrs(key, text, allow_wildcard=False)[1]
        elif key in ("proxy_uids", "proxy_gids", "owner_groups_exclude"):
            kw[key] = v.parse_owners(key, text)
        elif key == "owner_groups_include":
            kw[key] = None if text.strip() in ("*", "") else v.parse_owners(key, text)
        elif key in ("dns_servers_v4", "dns_servers_v6"):
            kw[key] = tuple(v.parse_ip(key, s) for s in v.split_list(key, text))
        elif key == "mode":
            if text not in ("REDIRECT", "TPROXY"):
                raise SpecError(key, text, "expected REDIRECT or TPROXY")
            kw[key] = text
        elif key == "ipv4_loopback_cidr":
            kw[key] = v.parse_loopback_cidr(key, text)
        elif key == "prevent_tuple_collision":
            kw[key] = v.parse_prevention(key, text)
        else:  # pragma: no cover - every Spec field is handled above
            raise SpecError(key, value, "not supported in YAML")
    if kw.get("prevent_tuple_collision") == "tproxy":
        kw["mode"] = mode_for(kw.get("mode", "REDIRECT"), "tproxy")
    if "proxy_uids" in kw and "proxy_gids" not in kw:
        kw["proxy_gids"] = kw["proxy_uids"]  # Istio: gid defaults to the uid
    return Spec(**kw)


MAX_SPEC_BYTES = 1 << 20
MAX_NESTING = 32  # a spec is two levels deep; anything far deeper is an attack or an accident


def nesting_depth(text: str) -> int:
    """Upper bound of the bracket/indent nesting of a YAML or JSON text, without parsing it
    (PyYAML and json recurse per level: a deep document is a RecursionError, not a parse error)."""
    depth = deepest = 0
    for c in text:
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
    indent = max((len(line) - len(line.lstrip(" -")) for line in text.splitlines()), default=0)
    return max(deepest, indent // 2)


def load_yaml_text(data: bytes | str, field: str, label: object) -> Any:
    """safe_load with every failure as one SpecError line: binary input, bad YAML, deep nesting."""
    import yaml  # lazy: only the YAML path pays for PyYAML

    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(field, label, f"not UTF-8 text (byte {exc.start}): not a YAML document") from None
    if "\x00" in data:
        raise SpecError(field, label, "contains NUL bytes: not a YAML document")
    if nesting_depth(data) > MAX_NESTING:
        raise SpecError(field, label, f"nested deeper than {MAX_NESTING} levels")
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise SpecError(field, label, f"not valid YAML ({first})") from None
    except RecursionError:
        raise SpecError(field, label, "not a usable YAML document (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        reason = str(exc).split(":")[0][:80]
        raise SpecError(field, label, f"not a usable YAML document ({reason})") from None


def load_spec_file(path: str) -> Spec:

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError("spec file", path, exc.strerror or str(exc)) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError("spec file", path, f"larger than {MAX_SPEC_BYTES} bytes: not a spec")
    doc = load_yaml_text(data, "spec file", path)
    if not isinstance(doc, dict):
        raise SpecError("spec file", path, "expected a mapping of spec fields")
    return spec_from_mapping(doc, source=path)
