"""`meshnet apply`: program a pod namespace from istio-iptables flags or a spec file.

Also home of the spec argument handling that `meshnet status` shares (the target's is in cli/target.py).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded
from meshnet.cli.target import BACKEND_CHOICES, refuse_own_namespace, resolve_target
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.flags import RunOptions
    from meshnet.spec.spec import Spec


def istio_flags_given(ns: Any) -> bool:
    """Any Istio flag that describes the spec (not how to run: --dry-run, --reconcile, ...)."""
    return bool(o.istio_given(vars(ns), spec_only=True))


def spec_and_options(ns: Any, netns: Netns) -> tuple[Spec, RunOptions]:
    """Spec from -f YAML or istio flags (+ env, as istio-iptables), IPv6 detected in the target."""
    from meshnet.apply.applier import spec_for_netns
    from meshnet.spec import flags as istio_flags

    values = istio_flags.values_from(o.parsed_flags(vars(ns)), os.environ)
    opts = istio_flags.run_options_from_values(values)
    if ns.spec_file:
        from meshnet.spec.yaml_file import load_spec_file

        if istio_flags_given(ns):
            raise UsageError("-f/--spec-file cannot be combined with istio flags")
        spec = load_spec_file(ns.spec_file)
    else:
        from meshnet.spec.resolvconf import read_nameservers

        servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if istio_flags.needs_resolv_conf(values):
            servers = read_nameservers(ns.resolv_conf)
        spec = istio_flags.spec_from_values(values, os.environ, dns_servers=servers)
    return spec_for_netns(spec, netns), opts


def _backend(requested: str, opts: RunOptions, netns: Netns) -> str:
    if opts.native_nftables:
        if requested not in ("auto", "nftables"):
            raise UsageError(f"--native-nftables contradicts --backend {requested}")
        return "nftables"
    if opts.force_iptables_binary:
        if requested != "auto":
            raise UsageError("--force-iptables-binary cannot be combined with --backend")
        from meshnet.apply.applier import detect_backend

        return detect_backend(netns, force=opts.force_iptables_binary)
    return requested


def run(ns: Any) -> int:
    netns = resolve_target(ns)
    spec, opts = spec_and_options(ns, netns)
    if not opts.dry_run:
        refuse_own_namespace(netns)
    backend = _backend(ns.backend, opts, netns)
    if opts.dry_run:
        return _dry_run(spec, backend, netns)
    from meshnet.apply.applier import apply_spec

    result = apply_spec(netns, spec, backend=backend, reconcile=opts.reconcile, force=opts.force_apply)
    sys.stdout.write(f"{result.message}\n")
    from meshnet.apply.collision_prevention import enforce_and_report

    enforce_and_report(netns, spec, sys.stdout.write)
    return 0


def _apply_ambient() -> click.Command:
    from meshnet.cli.ambient_cmds import apply_cmd

    return apply_cmd


def _dry_run(spec: Spec, backend: str, netns: Netns) -> int:
    from meshnet.apply.applier import detect_backend
    from meshnet.cli.render_cmd import render_text

    chosen = detect_backend(netns) if backend == "auto" else backend  # side-effect free
    sys.stdout.write(f"# backend: {chosen}, namespace: {netns.label}, ipv6: {str(spec.enable_ipv6).lower()}\n")
    sys.stdout.write(render_text(spec, "nft" if chosen == "nftables" else "restore"))
    return 0


@o.command("apply", ambient=_apply_ambient)
@o.target_options(o.WRITE_TARGET)
@o.spec_file
@o.resolv_conf
@o.backend_option(BACKEND_CHOICES, "auto", "Where the rules go: auto detects the pod's iptables backend.")
@o.ambient_switches
@o.istio_flags
def apply_cmd(**params: Any) -> None:
    """Program a pod's network namespace with Istio's sidecar rules, atomically and idempotently.

    The spec comes from Istio's flags (and their environment variables, as istio-iptables) or from
    -f SPEC.yaml; the target is --netns NAME|PATH or --pid PID, never the namespace meshnet runs in.
    --dry-run prints what would be written. Exit 0 applied, 1 failed (nothing half-applied), 2 usage.
    """
    click.get_current_context().exit(guarded(lambda: run(SimpleNamespace(**params))))
