"""Command-line options shared by `render --ambient` and `apply --ambient` -> AmbientSpec."""

from __future__ import annotations

import argparse

from meshnet.ambient import spec as s
from meshnet.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ambient", action="store_true", help="the in-pod rules of Istio's ambient mode")
    parser.add_argument("--ambient-host", action="store_true", help="the node's probe SNAT rules (ambient)")
    parser.add_argument("--redirect-dns", action="store_true", help="node-wide DNS capture (AMBIENT_DNS_CAPTURE)")
    parser.add_argument("--ipv6", action="store_true", help="IPv6 too (AMBIENT_ENABLE_IPV6)")
    parser.add_argument("--ingress-mode", action="store_true", help="no inbound capture (bypass-inbound-capture)")
    parser.add_argument("--dns-proxy", default=None, help="the pod's DNS override: enabled, disabled or unset")
    parser.add_argument("--virtual-interfaces", default=None, metavar="A,B",
                        help="interfaces whose inbound is the pod's outbound")
    parser.add_argument("--host-probe-snat", default=None, metavar="ADDR", help=f"default {s.DEFAULT_SNAT_V4}")
    parser.add_argument("--host-probe-snat-v6", default=None, metavar="ADDR", help=f"default {s.DEFAULT_SNAT_V6}")
    parser.add_argument("--kubelet-uid", default=None, help="kubelet's uid (nft host rules)")
    parser.add_argument("-f", "--spec-file", default=None, help="YAML of ambient spec fields")
    parser.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                        help="a pod annotation (dns-capture, reroute-virtual-interfaces, bypass-inbound-capture)")


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """--netns/--pid for the ambient commands (the sidecar ones: meshnet.cli.options.target_options)."""
    parser.add_argument("--netns", default=None, metavar="NAME|PATH", help="network namespace name or nsfs path")
    parser.add_argument("--pid", default=None, type=int, help="a process whose network namespace to use")


def make_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog)
    add_spec_options(parser)
    return parser


def spec_from_options(ns: argparse.Namespace) -> s.AmbientSpec:
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

        spec = s.overrides_from_annotations(spec, parse_annotation_args(ns.annotation))
    return spec
