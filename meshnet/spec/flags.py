"""istio-iptables flags and environment -> Spec + run options, with Istio's names and precedence.

Precedence is default < env < alias env < flag, as in Istio's `bindCmdlineFlags`. The flags are
declared once (FLAGS); `parse_flags` reads them pflag-style for istio-init without argparse or
click (the start-up path), meshnet/cli/options.py turns them into click options.
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
    from collections.abc import Collection, Mapping, Sequence


@dataclass(frozen=True)
class FlagDef:
    """One istio-iptables flag, declared once: the pflag parser below and the click options of
    `meshnet apply/render/status/diff/doctor` (meshnet/cli/options.py) are both made from it."""

    long: str
    short: str | None
    envs: tuple[str, ...]  # later names win (Istio's AdditionalEnv)
    default: str
    help: str  # one sentence, after Istio's flag usage text (tools/istio-iptables/pkg/cmd/root.go)
    is_bool: bool = False  # pflag bool: `--x` or `--x=true|false`, never `--x false`
    spec: bool = True  # False: how to run (RunOptions), not what to intercept (Spec)


FLAGS: tuple[FlagDef, ...] = (
    FlagDef("envoy-port", "p", (), "15001",  # bound without env in Istio
            "Envoy's outbound port: captured outbound TCP is redirected to it."),
    FlagDef("inbound-capture-port", "z", ("INBOUND_CAPTURE_PORT",), "15006",
            "Envoy's inbound port: captured inbound TCP to the pod is redirected to it."),
    FlagDef("inbound-tunnel-port", "e", ("INBOUND_TUNNEL_PORT",), "15008",
            "Istio's inbound tunnel (HBONE) port, which inbound capture leaves alone."),
    FlagDef("proxy-uid", "u", ("PROXY_UID",), "",
            "Comma-separated uids whose outbound traffic is not redirected, normally the proxy's "
            "(default: the uid of $ENVOY_USER, else 1337)."),
    FlagDef("proxy-gid", "g", ("PROXY_GID",), "",
            "Comma-separated gids whose outbound traffic is not redirected (default: the -u value)."),
    FlagDef("istio-inbound-interception-mode", "m", ("ISTIO_INBOUND_INTERCEPTION_MODE",), "",
            "How inbound connections reach Envoy: REDIRECT (NAT, the default) or TPROXY (original addresses kept)."),
    FlagDef("istio-inbound-tproxy-mark", "t", ("ISTIO_INBOUND_TPROXY_MARK",), "1337",
            "Packet mark TPROXY mode puts on inbound traffic to route it to Envoy."),
    FlagDef("istio-inbound-tproxy-route-table", "r", ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",), "133",
            "Routing table TPROXY mode uses for the marked packets (1-252)."),
    FlagDef("istio-inbound-ports", "b", ("ISTIO_INBOUND_PORTS",), "",
            "Comma-separated inbound ports redirected to Envoy: '*' for all, empty for none."),
    FlagDef("istio-local-exclude-ports", "d", ("ISTIO_LOCAL_EXCLUDE_PORTS",), "",
            "Comma-separated inbound ports never redirected, when -b is '*'."),
    FlagDef("istio-exclude-interfaces", "c", ("ISTIO_EXCLUDE_INTERFACES",), "",
            "Comma-separated interfaces whose traffic is captured in neither direction."),
    FlagDef("istio-service-cidr", "i", ("ISTIO_SERVICE_CIDR",), "",
            "Comma-separated CIDRs whose outbound traffic is redirected to Envoy: '*' for all, empty for none."),
    FlagDef("istio-service-exclude-cidr", "x", ("ISTIO_SERVICE_EXCLUDE_CIDR",), "",
            "Comma-separated CIDRs left out of outbound redirection, when -i is '*'."),
    FlagDef("istio-outbound-ports", "q", ("ISTIO_OUTBOUND_PORTS",), "",
            "Comma-separated outbound ports always redirected to Envoy, whatever their destination."),
    FlagDef("istio-local-outbound-ports-exclude", "o", ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",), "",
            "Comma-separated outbound ports never redirected to Envoy."),
    FlagDef("kube-virt-interfaces", "k", ("KUBE_VIRT_INTERFACES",), "",
            "Comma-separated virtual interfaces (VMs) whose inbound traffic is treated as outbound."),
    FlagDef("dry-run", "n", ("DRY_RUN",), "false",
            "Print the rules instead of writing them; nothing is changed.", True, False),
    FlagDef("iptables-probe-port", None, ("IPTABLES_PROBE_PORT",), "15002",
            "Port the --run-validation probe listens on and dials.", spec=False),
    FlagDef("probe-timeout", None, ("PROBE_TIMEOUT",), "5s",
            "How long --run-validation waits for its probe, e.g. 5s or 500ms.", spec=False),
    FlagDef("skip-rule-apply", None, ("SKIP_RULE_APPLY",), "false",
            "Write no rules (with --run-validation: only check them).", True, False),
    FlagDef("run-validation", None, ("RUN_VALIDATION",), "false",
            "Check that redirection works: a proxy-uid client must reach Envoy's port (exit 126 if not).",
            True, False),
    FlagDef("redirect-dns", None, ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"), "false",
            "Capture DNS traffic to the resolv.conf servers for the istio-agent's DNS proxy.", True),
    FlagDef("capture-all-dns", None, ("CAPTURE_ALL_DNS",), "false",
            "With --redirect-dns: capture all DNS to port 53, not only to the resolv.conf servers.", True),
    FlagDef("drop-invalid", None, ("DROP_INVALID", "INVALID_DROP"), "false",
            "Drop inbound packets conntrack classifies as INVALID.", True),
    FlagDef("dual-stack", None, ("DUAL_STACK", "ISTIO_DUAL_STACK"), "false",
            "Redirect IPv6 as well as IPv4 (dual-stack pods).", True),
    FlagDef("network-namespace", None, ("NETWORK_NAMESPACE",), "",
            "Network namespace to program, a name or nsfs path (default: the one the command runs in).", spec=False),
    FlagDef("cni-mode", None, ("CNI_MODE",), "false",
            "Istio's CNI-plugin mode: accepted for compatibility, meshnet behaves the same.", True, False),
    FlagDef("reconcile", None, ("RECONCILE",), "false",
            "Replace pre-existing, different Istio rules instead of failing on the drift.", True, False),
    FlagDef("cleanup-only", None, ("CLEANUP_ONLY",), "false",
            "Remove every Istio rule and write none.", True, False),
    FlagDef("force-apply", None, ("FORCE_APPLY",), "false",
            "Write the rules even when they appear to be in place already.", True, False),
    FlagDef("native-nftables", None, ("NATIVE_NFTABLES",), "false",
            "Write native nftables rules instead of iptables ones.", True, False),
    FlagDef("force-iptables-binary", None, ("FORCE_IPTABLES_BINARY",), "",
            "Break-glass choice of the iptables binary, legacy or nft (default: detected).", spec=False),
    # meshnet's own (not Istio's): see meshnet/apply/collision_prevention.py
    FlagDef("prevent-tuple-collision", None, ("PREVENT_TUPLE_COLLISION",), "auto",
            "meshnet's five-tuple collision prevention: auto, off, early-demux or tproxy."),
)
# Istio's log options: accepted for drop-in compatibility, not used.
LOG_FLAGS: tuple[FlagDef, ...] = (
    FlagDef("log_output_level", None, (), "", "Istio's log level option: accepted and ignored."),
    FlagDef("log_as_json", None, (), "false", "Istio's JSON log option: accepted and ignored.", True),
    FlagDef("log_target", None, (), "", "Istio's log target option: accepted and ignored."),
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


class ParsedFlags:
    """Parsed istio-iptables flags: one attribute per flag dest, None when not given."""

    def __init__(self, given: Mapping[str, str | None] | None = None) -> None:
        for flag in FLAGS:
            dest = flag.long.replace("-", "_")
            setattr(self, dest, None if given is None else given.get(dest))


def stray_argument(arg: str, bool_flag: str | None = None) -> str:
    """The one line for a word no flag takes. After a bool flag (`--redirect-dns false`) it says
    why: pflag reads that as `--redirect-dns` (true) plus a stray argument, which istio-iptables
    ignores; meshnet refuses it, the same way in every command, rather than guess."""
    if bool_flag is not None and arg.lower() in BOOL_WORDS:
        return f"unexpected argument {arg!r}: a bool flag takes its value after '=' ({bool_flag}={arg}), as in Istio"
    return f"unexpected argument {arg!r}: these flags take no positional arguments"


def _bool_flag_before(previous: str | None) -> str | None:
    """`--x` / `-n` when the previous word was a bool flag given without a value, else None."""
    if previous is None or "=" in previous:
        return None
    flag = _BY_NAME.get(previous[2:]) if previous.startswith("--") else _BY_SHORT.get(previous[1:])
    return f"--{flag.long}" if flag is not None and flag.is_bool else None


_BY_NAME = {f.long: f for f in (*FLAGS, *LOG_FLAGS)}
_BY_SHORT = {f.short: f for f in FLAGS if f.short}
_LOG_NAMES = frozenset(f.long for f in LOG_FLAGS)
BOOL_WORDS = frozenset(("1", "0", "t", "f", "true", "false", "y", "n", "yes", "no", "on", "off"))


def pflag_words(args: Sequence[str], bools: Mapping[str, str], takes_value: Collection[str],
                positional: bool = False) -> list[str]:
    """argv with every bool option written `--long=VALUE` (a bare `--x` or `-n` is `=true`), so a
    word after a bool flag is never its value: pflag's rule, for parsers that would otherwise take
    it (click, argparse). `bools` maps each spelling of a bool option to its long form;
    `takes_value` lists the options whose next word is their value. A word no option takes is a
    UsageError (the same line as istio-iptables), unless the parser has positional arguments;
    a bool word right after a bare bool flag always is."""
    out: list[str] = []
    i = 0
    after_bool: str | None = None
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out.extend(args[i - 1:])
            break
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and name in bools:
            out.append(f"{bools[name]}={value if eq else 'true'}")
            after_bool = None if eq else bools[name]
            continue
        if arg.startswith("-") and not arg.startswith("--") and arg[:2] in bools:
            rest = arg[2:]
            out.append(f"{bools[arg[:2]]}={(rest[1:] if rest.startswith('=') else rest) or 'true'}")
            after_bool = None if rest else bools[arg[:2]]
            continue
        previous_bool, after_bool = after_bool, None
        if arg.startswith("-") and not arg.startswith("--") and arg[2:3] == "=" and arg[:2] in takes_value:
            out.extend((arg[:2], arg[3:]))  # pflag's `-p=15001` is -p 15001 (click would keep the '=')
            continue
        if arg.startswith("-") and arg != "-":
            out.append(arg)
            if arg in takes_value and i < len(args):  # its value, whatever it looks like (-r -1)
                out.append(args[i])
                i += 1
            continue
        if not positional or (previous_bool is not None and arg.lower() in BOOL_WORDS):
            raise UsageError(stray_argument(arg, previous_bool))
        out.append(arg)
    return out


def parse_flags(argv: Sequence[str], prog: str = "istio-iptables") -> ParsedFlags:
    """pflag-compatible parsing of istio-iptables flags, without argparse or click.

    argparse (with the gettext, locale and shutil imports it triggers) costs ~9 ms, a fifth of
    an istio-init run, click more. Accepted forms, as pflag: `--flag value`, `--flag=value`,
    `-f value`, `-fvalue`, `-f=value`; booleans `--flag`, `--flag=true|false`. `-h/--help`
    prints the flags. The click commands read the same FLAGS (meshnet/cli/options.py).
    """
    out = ParsedFlags()
    args = list(argv)
    i = 0
    previous: str | None = None
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
            flag = _BY_NAME.get(name)
        elif arg.startswith("-") and len(arg) > 1 and arg != "-":
            flag = _BY_SHORT.get(arg[1])
            rest = arg[2:]
            inline = (rest[1:] if rest.startswith("=") else rest) if rest else None
        else:
            raise UsageError(stray_argument(arg, _bool_flag_before(previous)))
        if flag is None:
            raise UsageError(f"unknown flag: {arg.split('=', 1)[0]}")
        previous = arg
        if flag.is_bool:
            value = "true" if inline is None else inline
        elif inline is not None:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            raise UsageError(f"flag needs an argument: {arg}")
        if flag.long in _LOG_NAMES:
            continue  # accepted, not used
        setattr(out, flag.long.replace("-", "_"), value)
    return out


def env_and_default(flag: FlagDef) -> str:
    """`[env X, Y; default Z]`: the part of a flag's help that is the same in every command."""
    parts = ([f"env {', '.join(flag.envs)}"] if flag.envs else []) + (
        [f"default {flag.default}"] if flag.default else [])
    return f"[{'; '.join(parts)}]" if parts else ""


def flags_help(prog: str) -> str:
    lines = [f"usage: {prog} [flags]", "",
             "Set up Istio's sidecar interception (drop-in for istio-iptables). Bool flags take",
             "--flag or --flag=true|false; precedence: default < environment < flag.", "", "flags:"]
    for f in (*FLAGS, *LOG_FLAGS):
        short = f"-{f.short}, " if f.short else "    "
        lines.append(f"  {short}--{f.long}{'[=BOOL]' if f.is_bool else ' VALUE'}")
        lines.append(f"        {f.help} {env_and_default(f)}".rstrip())
    return "\n".join(lines) + "\n"


def _value(flag: FlagDef, ns: ParsedFlags, env: Mapping[str, str]) -> str:
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


def values_from(ns: ParsedFlags, env: Mapping[str, str] | None = None) -> dict[str, str]:
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
