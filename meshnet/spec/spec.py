"""The declarative interception spec: one immutable, validated value.

It knows nothing about iptables or nftables. Builders turn it into rules; readers (istio flags,
YAML, pod annotations) produce it. Field names follow Istio's Config fields, in snake case.
"""

from __future__ import annotations

from meshnet.errors import SpecError
from meshnet.lite.records import asdict, dataclass, fields, replace
from meshnet.spec import values as v

TYPE_CHECKING = False  # `typing` costs ~4 ms at start-up; only type checkers need it
if TYPE_CHECKING:
    from typing import Any, Literal

    Mode = Literal["REDIRECT", "TPROXY"]
else:
    Mode = str


@dataclass(frozen=True)
class Spec:
    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    mode: Mode = "REDIRECT"
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    # Inbound: wildcard captures every port but the excluded ones; empty list = no inbound capture.
    inbound_ports_wildcard: bool = False
    inbound_ports: tuple[int, ...] = ()
    inbound_exclude_ports: tuple[int, ...] = ()
    # Outbound CIDRs, rendered as Go's netip.Prefix.String() (v4 and v6 mixed, split when building).
    outbound_cidrs_wildcard: bool = False
    outbound_include_cidrs: tuple[str, ...] = ()
    outbound_exclude_cidrs: tuple[str, ...] = ()
    outbound_include_ports: tuple[int, ...] = ()
    outbound_exclude_ports: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    redirect_dns: bool = False
    capture_all_dns: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()
    drop_invalid: bool = False
    dual_stack: bool = False
    enable_ipv6: bool = False
    # None = '*' (every group is captured); a tuple = only these groups are captured.
    owner_groups_include: tuple[str, ...] | None = None
    owner_groups_exclude: tuple[str, ...] = ()
    ipv4_loopback_cidr: str = "127.0.0.1/32"
    # meshnet's own: how to prevent the five-tuple collision hang (meshnet/apply/collision_prevention.py).
    # Not part of Istio's rules: "auto" changes a sysctl on kernels < 6.7 only, never the rules.
    prevent_tuple_collision: str = "auto"

    def __post_init__(self) -> None:
        check_spec(self)

    # Derived values the builders share.
    @property
    def tproxy(self) -> bool:
        return self.mode == "TPROXY"

    @property
    def inbound_enabled(self) -> bool:
        return self.inbound_ports_wildcard or bool(self.inbound_ports)

    @property
    def dns_effective(self) -> bool:
        """Istio silently turns DNS capture off when there is nothing to capture."""
        return self.redirect_dns and (
            self.capture_all_dns or bool(self.dns_servers_v4) or bool(self.dns_servers_v6)
        )

    def with_changes(self, **changes: Any) -> Spec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


SPEC_FIELDS = {f.name for f in fields(Spec)}


def _split_family(cidrs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    if not cidrs:
        return [], []
    import ipaddress  # lazy: pods without CIDRs never need it
    v4 = [c for c in cidrs if ipaddress.ip_interface(c).version == 4]
    v6 = [c for c in cidrs if ipaddress.ip_interface(c).version == 6]
    return v4, v6


def cidrs_v4(cidrs: tuple[str, ...]) -> list[str]:
    return _split_family(cidrs)[0]


def cidrs_v6(cidrs: tuple[str, ...]) -> list[str]:
    return _split_family(cidrs)[1]


def has_loopback(cidrs: tuple[str, ...]) -> bool:
    if not cidrs:
        return False
    import ipaddress

    return any(ipaddress.ip_interface(c).ip.is_loopback for c in cidrs)


def check_spec(spec: Spec) -> None:
    """Re-check every field, so a Spec built directly in Python is as safe as one from flags."""
    for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
        v.parse_port(name, getattr(spec, name))
    if spec.mode not in ("REDIRECT", "TPROXY"):
        raise SpecError("mode", spec.mode, "expected REDIRECT or TPROXY")
    v.parse_mark("tproxy_mark", spec.tproxy_mark)
    v.parse_route_table("tproxy_route_table", spec.tproxy_route_table)
    for name in ("inbound_ports", "inbound_exclude_ports", "outbound_include_ports", "outbound_exclude_ports"):
        for port in getattr(spec, name):
            v.parse_port(name, port)
    if spec.inbound_ports_wildcard and spec.inbound_ports:
        raise SpecError("inbound_ports", spec.inbound_ports, "'*' cannot be combined with ports")
    if spec.outbound_cidrs_wildcard and spec.outbound_include_cidrs:
        raise SpecError("outbound_include_cidrs", spec.outbound_include_cidrs, "'*' cannot be combined")
    for name in ("outbound_include_cidrs", "outbound_exclude_cidrs"):
        for cidr in getattr(spec, name):
            if v.format_cidr(name, cidr) != cidr:
                raise SpecError(name, cidr, "CIDR must be written in canonical form")
    for name in ("exclude_interfaces", "kube_virt_interfaces"):
        v.parse_interfaces(name, ",".join(getattr(spec, name)))
        if any("," in i for i in getattr(spec, name)):
            raise SpecError(name, getattr(spec, name), "interface names cannot contain ','")
    for name in ("proxy_uids", "proxy_gids", "owner_groups_exclude"):
        _check_owner_tuple(name, getattr(spec, name))
    if not spec.proxy_uids:
        raise SpecError("proxy_uids", "", "at least one proxy uid is needed")
    if not spec.proxy_gids:
        raise SpecError("proxy_gids", "", "at least one proxy gid is needed")
    if spec.owner_groups_include is not None:
        _check_owner_tuple("owner_groups_include", spec.owner_groups_include)
        if len(spec.owner_groups_include) > v.MAX_OWNER_GROUPS_INCLUDE:
            raise SpecError(
                "owner_groups_include",
                ",".join(spec.owner_groups_include),
                f"at most {v.MAX_OWNER_GROUPS_INCLUDE} owner groups can be captured, "
                f"got {len(spec.owner_groups_include)}",
            )
    if spec.dns_servers_v4 or spec.dns_servers_v6:
        _check_dns_servers(spec)
    v.parse_loopback_cidr("ipv4_loopback_cidr", spec.ipv4_loopback_cidr)
    v.parse_prevention("prevent_tuple_collision", spec.prevent_tuple_collision)
    if spec.prevent_tuple_collision == "tproxy" and spec.mode != "TPROXY":
        raise SpecError("prevent_tuple_collision", "tproxy", "needs inbound interception mode TPROXY")


def mode_for(mode: str, prevention: str) -> str:
    """Readers: `--prevent-tuple-collision=tproxy` switches inbound interception to TPROXY."""
    return "TPROXY" if prevention == "tproxy" else mode


def _check_dns_servers(spec: Spec) -> None:
    from meshnet.lite.ipcheck import ip_version  # not ipaddress: on the istio-init path with DNS capture

    for server in spec.dns_servers_v4:
        if ip_version(v.parse_ip("dns_servers_v4", server)) != 4:
            raise SpecError("dns_servers_v4", server, "not an IPv4 address")
    for server in spec.dns_servers_v6:
        if ip_version(v.parse_ip("dns_servers_v6", server)) != 6:
            raise SpecError("dns_servers_v6", server, "not an IPv6 address")


def _check_owner_tuple(name: str, values: tuple[str, ...]) -> None:
    if not isinstance(values, tuple):
        raise SpecError(name, values, "expected a list")
    for value in values:
        if not isinstance(value, str) or "," in value:
            raise SpecError(name, value, "expected a numeric id or a name")
        v.parse_owners(name, value)


