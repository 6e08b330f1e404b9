"""istio-iptables flags and environment -> Spec + run options, with Istio's names and precedence.

Precedence is default < env < alias env < flag, as in Istio's `bindCmdlineFlags`. argparse (not
click) keeps the istio-init start-up path lean.
"""

from __future__ import annotations

import os
import pwd
import sys

from meshnet.errors import SpecError, UsageError
from meshnet.lite.records import dataclass
from meshnet.spec import values as v
from meshnet.spec.spec import Spec, mode_for

TYPE_CHECKING = False  # keep `typing` off the istio-init start-up path
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence
    from typing import NoReturn


@dataclass(frozen=True)
class FlagDef:
    long: str
    short: str | None
    envs: tuple[str, ...]
    default: str
    is_bool: bool = False


FLAGS: tuple[FlagDef, ...] = (
    FlagDef("envoy-port", "p", (), "15001"),  # bound without env in Istio
    FlagDef("inbound-capture-port", "z", ("INBOUND_CAPTURE_PORT",), "15006"),
    FlagDef("inbound-tunnel-port", "e", ("INBOUND_TUNNEL_PORT",), "15008"),
    FlagDef("proxy-uid", "u", ("PROXY_UID",), ""),
    FlagDef("proxy-gid", "g", ("PROXY_GID",), ""),
    FlagDef("istio-inbound-interception-mode", "m", ("ISTIO_INBOUND_INTERCEPTION_MODE",), ""),
    FlagDef("istio-inbound-tproxy-mark", "t", ("ISTIO_INBOUND_TPROXY_MARK",), "1337"),
    FlagDef("istio-inbound-tproxy-route-table", "r", ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",), "133"),
    FlagDef("istio-inbound-ports", "b", ("ISTIO_INBOUND_PORTS",), ""),
    FlagDef("istio-local-exclude-ports", "d", ("ISTIO_LOCAL_EXCLUDE_PORTS",), ""),
    FlagDef("istio-exclude-interfaces", "c", ("ISTIO_EXCLUDE_INTERFACES",), ""),
    FlagDef("istio-service-cidr", "i", ("ISTIO_SERVICE_CIDR",), ""),
    FlagDef("istio-service-exclude-cidr", "x", ("ISTIO_SERVICE_EXCLUDE_CIDR",), ""),
    FlagDef("istio-outbound-ports", "q", ("ISTIO_OUTBOUND_PORTS",), ""),
    FlagDef("istio-local-outbound-ports-exclude", "o", ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",), ""),
    FlagDef("kube-virt-interfaces", "k", ("KUBE_VIRT_INTERFACES",), ""),
    FlagDef("dry-run", "n", ("DRY_RUN",), "false", True),
    FlagDef("iptables-probe-port", None, ("IPTABLES_PROBE_PORT",), "15002"),
    FlagDef("probe-timeout", None, ("PROBE_TIMEOUT",), "5s"),
    FlagDef("skip-rule-apply", None, ("SKIP_RULE_APPLY",), "false", True),
    FlagDef("run-validation", None, ("RUN_VALIDATION",), "false", True),
    FlagDef("redirect-dns", None, ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"), "false", True),
    FlagDef("capture-all-dns", None, ("CAPTURE_ALL_DNS",), "false", True),
    FlagDef("drop-invalid", None, ("DROP_INVALID", "INVALID_DROP"), "false", True),
    FlagDef("dual-stack", None, ("DUAL_STACK", "ISTIO_DUAL_STACK"), "false", True),
    FlagDef("network-namespace", None, ("NETWORK_NAMESPACE",), ""),
    FlagDef("cni-mode", None, ("CNI_MODE",), "false", True),
    FlagDef("reconcile", None, ("RECONCILE",), "false", True),
    FlagDef("cleanup-only", None, ("CLEANUP_ONLY",), "false", True),
    FlagDef("force-apply", None, ("FORCE_APPLY",), "false", True),
    FlagDef("native-nftables", None, ("NATIVE_NFTABLES",), "false", True),
    FlagDef("force-iptables-binary", None, ("FORCE_IPTABLES_BINARY",), ""),
    # meshnet's own (not Istio's): see meshnet/apply/collision_prevention.py
    FlagDef("prevent-tuple-collision", None, ("PREVENT_TUPLE_COLLISION",), "auto"),
)
ENV_ONLY = {
    "ISTIO_OUTBOUND_OWNER_GROUPS": "*",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/32",
    "ENVOY_USER": "istio-proxy",
}


@dataclass(frozen=True)
class RunOptions:
    """istio-iptables options that are about *how* to run, not *what* to intercept."""

    dry_run: bool = False
    probe_port: int = 15002
    probe_timeout: float = 5.0
    skip_rule_apply: bool = False
    run_validation: bool = False
    network_namespace: str = ""
    cni_mode: bool = False
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    native_nftables: bool = False
    force_iptables_binary: str = ""


def add_istio_flags(parser: argparse.ArgumentParser) -> None:
    for flag in FLAGS:
        names = [f"--{flag.long}"] + ([f"-{flag.short}"] if flag.short else [])
        dest = flag.long.replace("-", "_")
        if flag.is_bool:
            # pflag bools: `--x`, `--x=true`, `--x=false`.
            parser.add_argument(*names, dest=dest, nargs="?", const="true", default=None, metavar="BOOL")
        else:
            parser.add_argument(*names, dest=dest, default=None)
    # Istio's log options are accepted for drop-in compatibility.
    parser.add_argument("--log_output_level", default=None)
    parser.add_argument("--log_as_json", nargs="?", const="true", default=None)
    parser.add_argument("--log_target", default=None)


class ParsedFlags:
    """Parsed istio-iptables flags: one attribute per flag dest, None when not given."""

    def __init__(self) -> None:
        for flag in FLAGS:
            setattr(self, flag.long.replace("-", "_"), None)


_LOG_FLAGS = {"log_output_level": False, "log_as_json": True, "log_target": False}


def parse_flags(argv: Sequence[str], prog: str = "istio-iptables") -> ParsedFlags:
    """pflag-compatible parsing of istio-iptables flags, without argparse.

    argparse (with the gettext, locale and shutil imports it triggers) costs ~9 ms, a fifth of
    an istio-init run. Accepted forms, as pflag: `--flag value`, `--flag=value`, `-f value`,
    `-fvalue`, `-f=value`; booleans `--flag`, `--flag=true|false`. `-h/--help` prints the flags.
    """
    by_long = {f.long: f for f in FLAGS}
    by_short = {f.short: f for f in FLAGS if f.short}
    out = ParsedFlags()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help"):
            sys.stdout.write(flags_help(prog))
            raise SystemExit(0)
        inline: str | None = None
        if arg.startswith("--") and len(arg) > 2:
            name, eq, rest = arg[2:].partition("=")
            inline = rest if eq else None
            if name in _LOG_FLAGS:  # Istio's log options: accepted, not used
                if inline is None and not _LOG_FLAGS[name]:
                    i += 1
                continue
            flag = by_long.get(name)
        elif arg.startswith("-") and len(arg) > 1 and arg != "-":
            flag = by_short.get(arg[1])
            rest = arg[2:]
            inline = (rest[1:] if rest.startswith("=") else rest) if rest else None
        else:
            raise UsageError(f"{prog}: unexpected argument {arg!r}")
        if flag is None:
            raise UsageError(f"{prog}: unknown flag: {arg.split('=', 1)[0]}")
        if flag.is_bool:
            value = "true" if inline is None else inline
        elif inline is not None:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            raise UsageError(f"{prog}: flag needs an argument: {arg}")
        setattr(out, flag.long.replace("-", "_"), value)
    return out


def flags_help(prog: str) -> str:
    lines = [f"usage: {prog} [flags]", "", "flags (environment variable in brackets):"]
    for f in FLAGS:
        short = f"-{f.short}, " if f.short else "    "
        env = f" [{', '.join(f.envs)}]" if f.envs else ""
        lines.append(f"  {short}--{f.long}{'' if f.is_bool else ' VALUE'}  (default {f.default!r}){env}")
    return "\n".join(lines) + "\n"


def new_parser(prog: str) -> argparse.ArgumentParser:
    """An argparse parser whose errors are UsageError (one line, exit 2), not argparse's exit."""
    import argparse  # only the interactive commands pay for argparse; istio-init uses parse_flags

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{self.prog}: {message}")

    return _Parser(prog=prog, add_help=True, allow_abbrev=False)


def make_parser(prog: str) -> argparse.ArgumentParser:
    """An argparse parser with every istio flag, for commands that add options of their own."""
    parser = new_parser(prog)
    add_istio_flags(parser)
    return parser


def _value(flag: FlagDef, ns: argparse.Namespace | ParsedFlags, env: Mapping[str, str]) -> str:
    cli = getattr(ns, flag.long.replace("-", "_"), None)
    if cli is not None:
        return str(cli)
    value = flag.default
    for name in flag.envs:  # later names (alias env) win over earlier ones
        if name in env:
            value = env[name]
    return value


def default_proxy_uid(env: Mapping[str, str]) -> str:
    """Istio: uid of $ENVOY_USER (istio-proxy), falling back to 1337."""
    user = env.get("ENVOY_USER", ENV_ONLY["ENVOY_USER"])
    try:
        return str(pwd.getpwnam(user).pw_uid)
    except (KeyError, OSError):
        return "1337"


def parse_duration(field: str, value: str) -> float:
    text = value.strip()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        number = text[: -len(suffix)]
        if text.endswith(suffix) and number.isascii() and number.replace(".", "", 1).isdigit():
            seconds = float(number) * units[suffix] if len(number) <= 40 else v.MAX_SECONDS + 1
            if seconds > v.MAX_SECONDS:
                raise SpecError(field, value, f"a duration must be at most {v.MAX_SECONDS:g} seconds")
            return seconds
    raise SpecError(field, value, "expected a duration such as 5s or 500ms")


def values_from(ns: argparse.Namespace | ParsedFlags, env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {f.long: _value(f, ns, env) for f in FLAGS}


def spec_from_values(values: Mapping[str, str], env: Mapping[str, str], *, enable_ipv6: bool = False,
                     dns_servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> Spec:
    mode = values["istio-inbound-interception-mode"]
    if mode not in ("", "REDIRECT", "TPROXY"):
        raise SpecError("--istio-inbound-interception-mode", mode, "expected REDIRECT or TPROXY")
    inbound_wild, inbound_ports = v.parse_ports_or_wildcard("--istio-inbound-ports", values["istio-inbound-ports"])
    out_wild, include_cidrs = v.parse_cidrs("--istio-service-cidr", values["istio-service-cidr"],
                                           allow_wildcard=True)
    _, exclude_cidrs = v.parse_cidrs("--istio-service-exclude-cidr", values["istio-service-exclude-cidr"],
                                     allow_wildcard=False)
    uids = values["proxy-uid"] or default_proxy_uid(env)
    gids = values["proxy-gid"] or uids
    include_groups_raw = env.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*").strip() or "*"
    include_groups = None if include_groups_raw == "*" else v.parse_owners(
        "ISTIO_OUTBOUND_OWNER_GROUPS", include_groups_raw)
    if include_groups is not None and len(include_groups) > v.MAX_OWNER_GROUPS_INCLUDE:
        raise SpecError("ISTIO_OUTBOUND_OWNER_GROUPS", include_groups_raw,
                        f"at most {v.MAX_OWNER_GROUPS_INCLUDE} owner groups can be captured, "
                        f"got {len(include_groups)}")
    redirect_dns = v.parse_bool("--redirect-dns", values["redirect-dns"])
    capture_all = v.parse_bool("--capture-all-dns", values["capture-all-dns"])
    servers_v4, servers_v6 = dns_servers if (redirect_dns and not capture_all) else ((), ())
    prevention = v.parse_prevention("--prevent-tuple-collision", values["prevent-tuple-collision"])
    mode = mode_for(mode, prevention)
    return Spec(
        proxy_port=v.parse_port("--envoy-port", values["envoy-port"]),
        inbound_capture_port=v.parse_port("--inbound-capture-port", values["inbound-capture-port"]),
        inbound_tunnel_port=v.parse_port("--inbound-tunnel-port", values["inbound-tunnel-port"]),
        proxy_uids=v.parse_owners("--proxy-uid", uids),
        proxy_gids=v.parse_owners("--proxy-gid", gids),
        mode="TPROXY" if mode == "TPROXY" else "REDIRECT",
        tproxy_mark=v.parse_mark("--istio-inbound-tproxy-mark", values["istio-inbound-tproxy-mark"]),
        tproxy_route_table=v.parse_route_table("--istio-inbound-tproxy-route-table",
                                               values["istio-inbound-tproxy-route-table"]),
        inbound_ports_wildcard=inbound_wild,
        inbound_ports=inbound_ports,
        inbound_exclude_ports=v.parse_ports("--istio-local-exclude-ports", values["istio-local-exclude-ports"]),
        outbound_cidrs_wildcard=out_wild,
        outbound_include_cidrs=include_cidrs,
        outbound_exclude_cidrs=exclude_cidrs,
        outbound_include_ports=v.parse_ports("--istio-outbound-ports", values["istio-outbound-ports"]),
        outbound_exclude_ports=v.parse_ports("--istio-local-outbound-ports-exclude",
                                             values["istio-local-outbound-ports-exclude"]),
        exclude_interfaces=v.parse_interfaces("--istio-exclude-interfaces", values["istio-exclude-interfaces"]),
        kube_virt_interfaces=v.parse_interfaces("--kube-virt-interfaces", values["kube-virt-interfaces"]),
        redirect_dns=redirect_dns,
        capture_all_dns=capture_all,
        dns_servers_v4=servers_v4,
        dns_servers_v6=servers_v6,
        drop_invalid=v.parse_bool("--drop-invalid", values["drop-invalid"]),
        dual_stack=v.parse_bool("--dual-stack", values["dual-stack"]),
        enable_ipv6=enable_ipv6,
        owner_groups_include=include_groups,
        owner_groups_exclude=v.parse_owners("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                                            env.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "")),
        ipv4_loopback_cidr=v.parse_loopback_cidr(
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", env.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "") or "127.0.0.1/32"),
        prevent_tuple_collision=prevention,
    )


def run_options_from_values(values: Mapping[str, str]) -> RunOptions:
    force = values["force-iptables-binary"]
    if force not in ("", "legacy", "nft"):
        raise SpecError("--force-iptables-binary", force, "expected legacy or nft")
    return RunOptions(
        dry_run=v.parse_bool("--dry-run", values["dry-run"]),
        probe_port=v.parse_port("--iptables-probe-port", values["iptables-probe-port"]),
        probe_timeout=parse_duration("--probe-timeout", values["probe-timeout"]),
        skip_rule_apply=v.parse_bool("--skip-rule-apply", values["skip-rule-apply"]),
        run_validation=v.parse_bool("--run-validation", values["run-validation"]),
        network_namespace=values["network-namespace"],
        cni_mode=v.parse_bool("--cni-mode", values["cni-mode"]),
        reconcile=v.parse_bool("--reconcile", values["reconcile"]),
        cleanup_only=v.parse_bool("--cleanup-only", values["cleanup-only"]),
        force_apply=v.parse_bool("--force-apply", values["force-apply"]),
        native_nftables=v.parse_bool("--native-nftables", values["native-nftables"]),
        force_iptables_binary=force,
    )


def needs_resolv_conf(values: Mapping[str, str]) -> bool:
    return v.parse_bool("--redirect-dns", values["redirect-dns"]) and not v.parse_bool(
        "--capture-all-dns", values["capture-all-dns"])


def parse_istio_args(argv: Sequence[str], env: Mapping[str, str] | None = None, *, enable_ipv6: bool = False,
                     dns_servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
                     prog: str = "istio-iptables") -> tuple[Spec, RunOptions]:
    env = os.environ if env is None else env
    values = values_from(parse_flags(argv, prog), env)
    return spec_from_values(values, env, enable_ipv6=enable_ipv6, dns_servers=dns_servers), \
        run_options_from_values(values)
