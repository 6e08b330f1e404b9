"""Command-line options shared by `render --ambient` and `apply --ambient` -> AmbientSpec.

Declared once (SPEC_OPTIONS), with pflag's bool rule like the sidecar flags (meshnet/spec/flags.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from meshnet.ambient import spec as s
from meshnet.errors import UsageError
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and pflag's bool rule: every `store_true` option added (here
    or by the ambient commands) becomes `--x` or `--x=true|false`, a bool, and `--x false` is
    refused with the same line as istio-iptables and the click commands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bools: dict[str, str] = {}
        self._takes_value: set[str] = set()
        kwargs.setdefault("allow_abbrev", False)  # pflag has no abbreviations (--ambient-h is not --ambient-host)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if kwargs.get("action") == "store_true":
            long = next(a for a in args if a.startswith("--"))
            kwargs.update(action="store", default=False, metavar="BOOL", type=_bool_of(long))
            action = super().add_argument(*args, **kwargs)
            self._bools.update({a: long for a in action.option_strings})
            return action
        action = super().add_argument(*args, **kwargs)
        if action.nargs != 0:
            self._takes_value.update(action.option_strings)
        return action

    # ignore: argparse's overloads also return a caller's namespace type; this parser gives a Namespace only
    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        from meshnet.spec.flags import pflag_words

        words = pflag_words(list(sys.argv[1:] if args is None else args), self._bools, self._takes_value)
        return super().parse_args(words, namespace)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _bool_of(option: str) -> Callable[[str], bool]:
    def convert(value: str) -> bool:
        from meshnet.errors import SpecError
        from meshnet.spec.values import parse_bool

        try:
            return parse_bool(option, value)
        except SpecError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None

    return convert


def add_spec_options(parser: argparse.ArgumentParser) -> None:
    for opt in SPEC_OPTIONS:
        if opt.is_bool:
            parser.add_argument(*opt.names, action="store_true", help=opt.help)
        elif opt.repeat:
            parser.add_argument(*opt.names, action="append", default=[], metavar=opt.metavar, help=opt.help)
        else:
            parser.add_argument(*opt.names, default=None, metavar=opt.metavar, help=opt.help)


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
