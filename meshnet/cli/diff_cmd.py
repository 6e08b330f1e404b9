"""`meshnet diff`: live rules of a pod against the expected spec, per chain, exit 1 when they differ.

The spec comes from istio-iptables flags (+ env), `-f SPEC.yaml`, or `--cni --annotation K=V`;
IPv6 is expected the way Istio decides it, from the pod's own addresses. The argument helpers
here are shared with `meshnet doctor`.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import diagnostic
from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.spec.spec import Spec

# The expected-spec options diff and doctor share.
expected_spec_options = o.stack(o.target_options(o.READ_TARGET), o.json_output, o.spec_file, o.cni_spec,
                                o.resolv_conf)


def resolve_netns(ns: Any) -> Netns:
    """--netns/--pid, or the namespace meshnet runs in (a debug container in the pod)."""
    from meshnet.cli.inspect_target import inspect_target

    if ns.netns is not None and ns.pid is not None:
        raise UsageError("give either --netns or --pid, not both")
    return inspect_target(ns.netns, ns.pid)


def spec_given(ns: Any) -> bool:
    return bool(o.istio_given(vars(ns))) or bool(ns.spec_file) or ns.cni


def expected_spec(ns: Any, netns: Netns) -> Spec:
    """The spec the user expects, with IPv6 decided from the pod's addresses like Istio."""
    from meshnet.apply.applier import spec_for_netns
    from meshnet.spec import flags as istio_flags

    if ns.cni:
        from meshnet.spec.annotations import parse_annotation_args, spec_from_annotations
        from meshnet.spec.values import parse_int

        uid = parse_int("--proxy-uid", ns.proxy_uid, 0, 0xFFFFFFFE) if ns.proxy_uid else None
        gid = parse_int("--proxy-gid", ns.proxy_gid, 0, 0xFFFFFFFE) if ns.proxy_gid else None
        spec = spec_from_annotations(parse_annotation_args(list(ns.annotation)), proxy_uid=uid, proxy_gid=gid)
    elif ns.spec_file:
        from meshnet.spec.yaml_file import load_spec_file

        if o.istio_given(vars(ns)):
            raise UsageError("-f/--spec-file cannot be combined with istio flags")
        spec = load_spec_file(ns.spec_file)
    else:
        from meshnet.spec.resolvconf import read_nameservers

        if ns.annotation:
            raise UsageError("--annotation needs --cni")
        values = istio_flags.values_from(o.parsed_flags(vars(ns)), os.environ)
        servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if istio_flags.needs_resolv_conf(values):
            servers = read_nameservers(ns.resolv_conf)
        spec = istio_flags.spec_from_values(values, os.environ, dns_servers=servers)
    return spec_for_netns(spec, netns)


def _diff_ambient() -> click.Command:
    from meshnet.cli.ambient_cmds import diff_cmd

    return diff_cmd


def run_diff(ns: Any) -> int:
    from meshnet.apply.applier import detect_backend
    from meshnet.diagnose.checks.drift import diff_live
    from meshnet.state.live import read_live

    if not spec_given(ns):
        raise UsageError("give the expected spec: istio-iptables flags, -f SPEC.yaml, or --cni --annotation K=V")
    netns = resolve_netns(ns)
    spec = expected_spec(ns, netns)
    live = read_live(netns)
    if not live.xtables and live.nft is None:
        raise UsageError(f"cannot read any rules in {netns.label}: {'; '.join(live.errors)}")
    diff = diff_live(live, spec, detect_backend(netns))
    if ns.json:
        out = {"netns": netns.label, **diff.to_dict(), "errors": live.errors}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for line in diff.lines():
            sys.stdout.write(line + "\n")
        for err in live.errors:
            sys.stderr.write(f"meshnet diff: warning: {err}\n")
        state = "in sync with the spec" if diff.empty else f"{len(diff.lines())} difference(s)"
        sys.stdout.write(f"{netns.label} ({', '.join(diff.backends)}): {state}\n")
    return 0 if diff.empty else 1


@o.command("diff", ambient=_diff_ambient)
@expected_spec_options
@o.ambient_switches
@o.istio_flags
def diff_cmd(**params: Any) -> None:
    """Compare a pod's live rules with the expected spec: missing, extra and reordered rules per chain.

    The spec: Istio's flags, -f SPEC.yaml or --cni --annotation K=V; IPv6 is expected the way Istio
    decides it, from the pod's addresses. Exit 0 in sync, 1 different, 2 could not inspect.
    """

    click.get_current_context().exit(diagnostic(lambda: run_diff(SimpleNamespace(**params)), prog="meshnet diff"))
