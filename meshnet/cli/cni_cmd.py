"""`meshnet cni install|uninstall|build`: chain meshnet-cni into a node's CNI configuration."""

from __future__ import annotations

from pathlib import Path

import click

from meshnet.cli.errors import guarded
from meshnet.errors import UsageError

_LOG_LEVELS = ("debug", "info", "warn", "error", "none")
_BACKENDS = ("auto", "iptables-legacy", "iptables-nft", "nftables")


def _conflist(conflist: str | None, conf_dir: str | None) -> Path:
    from meshnet.cni.install import pick_conflist

    if bool(conflist) == bool(conf_dir):
        raise UsageError("give exactly one of --conflist PATH or --conf-dir DIR")
    return Path(conflist) if conflist else pick_conflist(Path(conf_dir or ""))


@click.group("cni")
def cni_cmd() -> None:
    """The meshnet-cni chained CNI plugin: build, install, uninstall."""


@cni_cmd.command("build")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the file.")
@click.option("--python", default=None, help="Interpreter line of the file (default /usr/bin/python3).")
def build_cmd(output: str, python: str | None) -> None:
    """Build the single-file plugin executable (a zipapp for the node's python3)."""

    def go() -> int:
        from meshnet.cni.bundle import DEFAULT_INTERPRETER, build

        click.echo(str(build(output, python or DEFAULT_INTERPRETER)))
        return 0

    raise SystemExit(guarded(go))


@cni_cmd.command("install")
@click.option("--conflist", default=None, type=click.Path(dir_okay=False), help="The conflist to chain into.")
@click.option("--conf-dir", default=None, type=click.Path(file_okay=False),
              help="Or: use the conflist a runtime would pick in this directory.")
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True, type=click.Path(file_okay=False),
              help="Where the runtime finds CNI plugin executables.")
@click.option("--plugin-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A prebuilt plugin file (default: build one now).")
@click.option("--python", default=None, help="Interpreter for a plugin built now (default /usr/bin/python3).")
@click.option("--exclude-namespace", "exclude_namespaces", multiple=True,
              help="Pod namespace to leave alone (repeatable; default kube-system).")
@click.option("--backend", type=click.Choice(_BACKENDS), default=None,
              help="The backend the plugin writes pods' rules with (default auto: detected per pod).")
@click.option("--kubeconfig", default=None, help="Read pods from the Kubernetes API with this kubeconfig.")
@click.option("--log-level", type=click.Choice(_LOG_LEVELS), default=None,
              help="How much the plugin logs (default info).")
@click.option("--log-file", default=None, help="A file the plugin appends its log to (default: none).")
def install_cmd(conflist: str | None, conf_dir: str | None, bin_dir: str, plugin_file: str | None,
                python: str | None, exclude_namespaces: tuple[str, ...], backend: str | None,
                kubeconfig: str | None, log_level: str | None, log_file: str | None) -> None:
    """Copy the plugin into the bin dir and chain it last into the conflist (idempotent)."""

    def go() -> int:
        import tempfile

        from meshnet.cni.bundle import DEFAULT_INTERPRETER, build
        from meshnet.cni.install import install

        target = _conflist(conflist, conf_dir)
        options = {"exclude_namespaces": list(exclude_namespaces), "backend": backend, "kubeconfig": kubeconfig,
                   "log_level": log_level, "log_file": log_file}
        with tempfile.TemporaryDirectory(prefix="meshnet-cni-") as tmp:
            source = Path(plugin_file) if plugin_file else build(Path(tmp) / "meshnet-cni",
                                                                 python or DEFAULT_INTERPRETER)
            done = install(target, Path(bin_dir), source, options)
        for line in done or [f"meshnet-cni already installed in {target} and {bin_dir}"]:
            click.echo(line)
        return 0

    raise SystemExit(guarded(go))


@cni_cmd.command("uninstall")
@click.option("--conflist", default=None, type=click.Path(dir_okay=False), help="The conflist to unchain from.")
@click.option("--conf-dir", default=None, type=click.Path(file_okay=False),
              help="Or: use the conflist a runtime would pick in this directory.")
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True, type=click.Path(file_okay=False),
              help="Where the plugin executable was installed.")
def uninstall_cmd(conflist: str | None, conf_dir: str | None, bin_dir: str) -> None:
    """Remove the plugin from the conflist and the bin dir (idempotent)."""

    def go() -> int:
        from meshnet.cni.install import uninstall

        done = uninstall(_conflist(conflist, conf_dir), Path(bin_dir))
        for line in done or ["meshnet-cni was not installed"]:
            click.echo(line)
        return 0

    raise SystemExit(guarded(go))


@cni_cmd.command("agent")
@click.option("--socket", "socket_path", default=None, help="Unix socket (default /run/meshnet-cni/agent.sock).")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Pre-forked worker processes serving ADD/DEL/CHECK.")
@click.option("--metrics-port", "metrics_address", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus metrics on this address (e.g. 15099 or 127.0.0.1:15099).")
@click.option("--doctor-interval", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="With --metrics-port: seconds between node-wide doctor sweeps (0: none).")
@click.option("--ambient-conflist", default="", metavar="PATH",
              help="Ambient node agent: the conflist whose meshnet-cni entry has an `ambient` section; "
                   "recorded pods are reconciled at start.")
@click.option("--ambient-interval", default=0.0, show_default=True, type=click.FloatRange(min=0, max=3600),
              help="With --ambient-conflist: seconds between passes over the runtime's sandboxes (--cri) that "
                   "enroll/un-enroll pods by their istio.io/dataplane-mode labels (0: never).")
@click.option("--repair-interval", default=0.0, show_default=True, type=click.FloatRange(min=0, max=86400),
              help="Seconds between passes that repair meshed pods without (or with drifted) rules in place "
                   "(0: never); see `meshnet repair`.")
@click.option("--cri", default="unix:///run/containerd/containerd.sock", show_default=True, metavar="ENDPOINT",
              help="With --repair-interval or --ambient-interval: the runtime's CRI socket.")
@click.option("--max-repairs", default=10, show_default=True, type=click.IntRange(min=0),
              help="With --repair-interval: at most this many pods changed per pass.")
@click.option("--repair-conflist", default=None, type=click.Path(dir_okay=False),
              help="With --repair-interval: the conflist whose meshnet-cni entry decides pods (default: found "
                   "in /etc/cni/net.d).")
def agent_cmd(socket_path: str | None, workers: int, metrics_address: str | None, doctor_interval: float,
              ambient_conflist: str, ambient_interval: float, repair_interval: float, cri: str, max_repairs: int,
              repair_conflist: str | None) -> None:
    """Serve plugin requests from warm, pre-forked workers (optional; the plugin works without it)."""

    def go() -> int:
        from meshnet.cni.agent import RepairOptions, serve
        from meshnet.cni.shim import DEFAULT_SOCKET
        from meshnet.errors import UsageError

        if metrics_address is not None:
            from meshnet.cni.metrics import parse_address

            try:
                parse_address(metrics_address)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        repair = RepairOptions(repair_interval, cri, max_repairs, repair_conflist) if repair_interval else None
        return serve(socket_path or DEFAULT_SOCKET, workers, metrics_address=metrics_address,
                     doctor_interval=doctor_interval, ambient_conflist=ambient_conflist, repair=repair,
                     ambient_sync=(cri, ambient_interval) if ambient_interval else None)

    raise SystemExit(guarded(go))
