"""Options declared once for every `meshnet` command, and the command class that parses them.

- The Istio flags come from `meshnet.spec.flags.FLAGS` (name, short form, env, default, help):
  `istio_flags` turns each into a click option; `meshnet istio-iptables` reads the same table
  with its own pflag-compatible parser (no click on the istio-init path).
- One meaning per spelling, Istio's (pflag): a bool flag is `--flag` or `--flag=true|false`. A
  separate word (`--redirect-dns false`) is refused with the same line in every command.
- Shared options (target, spec sources, --backend, --json, the node-wide set) are defined here
  once and reused by the commands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from meshnet.spec.flags import FLAGS, LOG_FLAGS, FlagDef, env_and_default

F = TypeVar("F", bound=Callable[..., Any])
AMBIENT_SWITCHES = ("--ambient", "--ambient-host")
_AMBIENT_ARGV = "meshnet.ambient_argv"


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one, in the order written (the first one listed first in --help)."""

    def wrap(fn: F) -> F:
        for decorate in reversed(decorators):
            fn = decorate(fn)
        return fn

    return wrap


class BoolOption(click.Option):
    """A pflag bool: `--x` or `--x=true|false` (MeshnetCommand turns a bare `--x` into `--x=true`
    before click parses, so click sees a plain value option)."""

    def __init__(self, *args: Any, istio: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "[=BOOL]")
        super().__init__(*args, **kwargs)
        self.istio = istio

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        return None if record is None else (record[0].replace(" [=BOOL]", "[=BOOL]"), record[1])


class IstioOption(click.Option):
    """An Istio flag that takes a value (listed in its own --help section)."""

    istio = True


def to_bool(option: str, value: str | bool | None) -> bool:
    """A meshnet bool option's value (Go's strconv.ParseBool spellings); a bad one is a usage error."""
    from meshnet.errors import SpecError
    from meshnet.spec.values import parse_bool

    if value is None:
        return False
    try:
        return parse_bool(option, value)
    except SpecError as exc:
        raise click.BadParameter(exc.reason, param_hint=f"'{option}'") from None


def flag(*decls: str, help: str, **kwargs: Any) -> Callable[[F], F]:  # noqa: A002  (click's own keyword)
    """A meshnet bool option, pflag style: `--json` or `--json=true|false`; the callback gets a bool."""
    name = next(d for d in decls if d.startswith("--"))
    return click.option(*decls, cls=BoolOption, default=None, help=help,
                        callback=lambda _ctx, _param, value: to_bool(name, value), **kwargs)


def _istio_option(flag_def: FlagDef) -> Callable[[F], F]:
    decls = [f"--{flag_def.long}", *([f"-{flag_def.short}"] if flag_def.short else []),
             flag_def.long.replace("-", "_")]
    text = f"{flag_def.help} {env_and_default(flag_def)}".rstrip()
    if flag_def.is_bool:
        return click.option(*decls, cls=BoolOption, istio=True, default=None, help=text)
    return click.option(*decls, cls=IstioOption, default=None, metavar="VALUE", help=text)


# Every istio-iptables flag (values stay strings, None when not given: env and defaults are
# applied later by meshnet.spec.flags.values_from, with Istio's precedence).
istio_flags = stack(*(_istio_option(f) for f in (*FLAGS, *LOG_FLAGS)))
ISTIO_DESTS = tuple(f.long.replace("-", "_") for f in FLAGS)


def istio_given(params: dict[str, Any], *, spec_only: bool = False) -> list[str]:
    """The Istio flags given on the command line (spec_only: only those that describe the Spec)."""
    return [f"--{f.long}" for f in FLAGS if params.get(f.long.replace("-", "_")) is not None
            and (f.spec or not spec_only)]


def parsed_flags(params: dict[str, Any]) -> Any:
    from meshnet.spec.flags import ParsedFlags

    return ParsedFlags({dest: params.get(dest) for dest in ISTIO_DESTS})


# --- the target namespace -------------------------------------------------------------------
def target_options(default: str) -> Callable[[F], F]:
    """--netns / --pid. `default` says what neither means for this command."""
    return stack(
        click.option("--netns", default=None, metavar="NAME|PATH",
                     help=f"The pod's network namespace: a name in /run/netns or an nsfs path ({default})."),
        click.option("--pid", default=None, type=int,
                     help="A process whose network namespace to use, instead of --netns."),
    )


WRITE_TARGET = "one of --netns or --pid is required"
READ_TARGET = "default: the namespace meshnet runs in"

# --- where the expected spec comes from -----------------------------------------------------
spec_file = click.option("-f", "--spec-file", default=None, metavar="FILE",
                         help="A spec YAML file instead of Istio flags (see profiles/).")
resolv_conf = click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True, metavar="FILE",
                           help="Where --redirect-dns reads the DNS servers to capture.")
cni_spec = stack(
    flag("--cni", help="The spec the CNI plugin derives from pod annotations (with --annotation)."),
    click.option("--annotation", multiple=True, metavar="KEY=VALUE",
                 help="A pod annotation for --cni, e.g. traffic.sidecar.istio.io/excludeInboundPorts=8080 "
                      "(repeatable)."),
)
json_output = flag("--json", help="Machine-readable output (JSON).")
def _ambient_switches() -> Callable[[F], F]:
    """--ambient/--ambient-host as declared in meshnet/ambient/options.py; a command line holding one
    goes to the command's ambient variant (`meshnet render --ambient --help` lists its options)."""
    from meshnet.ambient.options import SPEC_OPTIONS

    declared = {opt.names[0]: opt.help for opt in SPEC_OPTIONS}
    return stack(*(flag(name, help=f"{declared[name]} See --ambient --help.") for name in AMBIENT_SWITCHES))


ambient_switches = _ambient_switches()


def backend_option(choices: Sequence[str], default: str, help: str) -> Callable[[F], F]:  # noqa: A002
    return click.option("--backend", default=default, show_default=True, type=Choice(choices), help=help)


class Choice(click.Choice[str]):
    """click.Choice with argparse's wording (`invalid choice`), which scripts and tests match."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        self.fail(f"invalid choice: {value!r} (choose from {', '.join(map(str, self.choices))})", param, ctx)


# --- node-wide commands (doctor --all, collect --all) ---------------------------------------
node_options = stack(
    flag("--all", help="Every pod network namespace on the node."),
    click.option("--cri", default=None, metavar="ENDPOINT",
                 help="CRI socket for pod names, e.g. unix:///run/containerd/containerd.sock."),
    click.option("--netns-dir", multiple=True, metavar="DIR",
                 help="Scan this directory of namespace files instead of the runtimes' defaults "
                      "(/run/netns, /var/run/netns, docker's; repeatable)."),
    flag("--no-proc", help="Do not scan /proc/*/ns/net."),
    flag("--include-host", help="Also the caller's own (host) namespace."),
    click.option("--jobs", type=int, default=4, show_default=True, help="Namespaces inspected in parallel."),
    click.option("--pod-timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
                 help="Time bound per namespace."),
)
host_netns = click.option("--host-netns", default=None, metavar="NAME|PATH",
                          help="Namespace whose iptables backend counts as the host's (default: the current one).")


# --- the command class ----------------------------------------------------------------------
class MeshnetCommand(click.Command):
    """A click command with pflag's bool rule, one-line errors, Istio flags in their own --help
    section and, when `ambient` is set, `--ambient`/`--ambient-host` handed to the ambient CLI."""

    def __init__(self, *args: Any, ambient: Callable[[], click.Command] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ambient = ambient  # the ambient variant (meshnet/cli/ambient_cmds.py), loaded when used

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.ambient is not None and any(a.split("=", 1)[0] in AMBIENT_SWITCHES for a in args):
            ctx.meta[_AMBIENT_ARGV] = list(args)  # the ambient variant parses them, --help included
            return []
        return super().parse_args(ctx, pflag_args(self, ctx, args))

    def invoke(self, ctx: click.Context) -> Any:
        if _AMBIENT_ARGV in ctx.meta and self.ambient is not None:
            variant = self.ambient()
            with variant.make_context(ctx.info_name, ctx.meta[_AMBIENT_ARGV], parent=ctx.parent) as sub:
                return variant.invoke(sub)
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own: list[tuple[str, str]] = []
        istio: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                (istio if getattr(param, "istio", False) else own).append(record)
        with formatter.section("Options"):
            formatter.write_dl(own)
        if istio:
            with formatter.section("Istio flags (as istio-iptables; bool flags: --flag or --flag=true|false)"):
                formatter.write_dl(istio)


def pflag_args(command: click.Command, ctx: click.Context, args: Sequence[str]) -> list[str]:
    """The command's argv in pflag's bool rule (meshnet.spec.flags.pflag_words), from its own options."""
    from meshnet.errors import UsageError
    from meshnet.spec.flags import pflag_words

    bools: dict[str, str] = {}  # option string -> its long spelling
    takes_value: set[str] = set()
    positional = False
    for param in command.get_params(ctx):
        if isinstance(param, BoolOption):
            long = next(o for o in param.opts if o.startswith("--"))
            bools.update({o: long for o in param.opts})
        elif isinstance(param, click.Option):
            if not param.is_flag and not param.count:
                takes_value.update(param.opts)
        elif isinstance(param, click.Argument):
            positional = True
    try:
        return pflag_words(args, bools, takes_value, positional)
    except UsageError as exc:
        raise click.UsageError(str(exc), ctx) from None


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], MeshnetCommand]:
    """@click.command with MeshnetCommand."""
    return click.command(name, cls=MeshnetCommand, **kwargs)
