"""The ambient spec's command-line options, declared once (SPEC_OPTIONS: meshnet/cli/ambient_cmds.py
turns them into click options under pflag's bool rule, as the sidecar flags), and their values ->
AmbientSpec."""

from __future__ import annotations

from typing import Any

from meshnet.ambient import spec as s
from meshnet.lite.records import dataclass


@dataclass(frozen=True)
class Option:
    """One ambient option, declared once: names, help, and whether it is a bool (pflag's rule:
    `--x` or `--x=true|false`, as the sidecar flags) or takes a value."""

    names: tuple[str, ...]
    help: str
    is_bool: bool = False
    metavar: str | None = None
    repeat: bool = False  # may be given several times (a list)


SPEC_OPTIONS: tuple[Option, ...] = (
    Option(("--ambient",), "The in-pod rules of Istio's ambient mode (redirection to ztunnel).", True),
    Option(("--ambient-host",), "The node's probe SNAT rules of Istio's ambient mode.", True),
    Option(("--redirect-dns",), "Capture DNS for ztunnel's DNS proxy, node-wide (AMBIENT_DNS_CAPTURE).", True),
    Option(("--ipv6",), "IPv6 rules too (AMBIENT_ENABLE_IPV6).", True),
    Option(("--ingress-mode",), "No inbound capture (the bypass-inbound-capture annotation).", True),
    Option(("--dns-proxy",), "The pod's DNS proxy override: enabled, disabled or unset."),
    Option(("--virtual-interfaces",), "Comma-separated interfaces whose inbound traffic is the pod's outbound.",
           metavar="A,B"),
    Option(("--host-probe-snat",), f"The address kubelet's probes are SNATed to (default {s.DEFAULT_SNAT_V4}).",
           metavar="ADDR"),
    Option(("--host-probe-snat-v6",), f"The IPv6 address kubelet's probes are SNATed to "
                                      f"(default {s.DEFAULT_SNAT_V6}).", metavar="ADDR"),
    Option(("--kubelet-uid",), "kubelet's uid, for the nft host rules."),
    Option(("-f", "--spec-file"), "A YAML file of ambient spec fields.", metavar="FILE"),
    Option(("--annotation",), "A pod annotation: dns-capture, reroute-virtual-interfaces or bypass-inbound-capture "
                              "(repeatable).", metavar="KEY=VALUE", repeat=True),
)


def spec_from_options(ns: Any) -> s.AmbientSpec:
    """Flags over the spec file; pod annotations last, as istio-cni applies PodLevelOverrides."""
    from meshnet.spec import values as v

    base = s.load_spec_file(ns.spec_file) if ns.spec_file else s.AmbientSpec()
    changes: dict[str, object] = {}
    if ns.redirect_dns:
        changes["redirect_dns"] = True
    if ns.ipv6:
        changes["enable_ipv6"] = True
    if ns.ingress_mode:
        changes["ingress_mode"] = True
    if ns.dns_proxy is not None:
        changes["dns_proxy"] = s.parse_dns_proxy("--dns-proxy", ns.dns_proxy)
    if ns.virtual_interfaces is not None:
        changes["virtual_interfaces"] = v.parse_interfaces("--virtual-interfaces", ns.virtual_interfaces)
    if ns.host_probe_snat is not None:
        changes["host_probe_snat"] = s.parse_address("--host-probe-snat", ns.host_probe_snat, 4)
    if ns.host_probe_snat_v6 is not None:
        changes["host_probe_snat_v6"] = s.parse_address("--host-probe-snat-v6", ns.host_probe_snat_v6, 6)
    if ns.kubelet_uid is not None:
        changes["kubelet_uid"] = str(v.parse_int("--kubelet-uid", ns.kubelet_uid, 0, 0xFFFFFFFE))
    spec = base.with_changes(**changes)
    if ns.annotation:
        from meshnet.spec.annotations import parse_annotation_args

        spec = s.overrides_from_annotations(spec, parse_annotation_args(list(ns.annotation)))
    return spec
