"""`meshnet validate`: Istio's istio-validation check against a namespace (exit 126 on failure)."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import guarded


def run(ns: Any) -> int:
    from meshnet.apply.validation_probe import validate
    from meshnet.cli.target import resolve_target
    from meshnet.spec import values as v
    from meshnet.spec.flags import parse_duration
    from meshnet.state.addresses import ipv6_enabled

    netns = resolve_target(ns)
    port = v.parse_port("--probe-port", ns.probe_port)
    timeout = parse_duration("--timeout", ns.timeout)
    uid = v.parse_int("--uid", ns.uid, 0, 0xFFFFFFFE)
    ipv6 = ns.ipv6 or ipv6_enabled(netns, dual_stack=False)
    sys.stdout.write(validate(netns, probe_port=port, timeout=timeout, ipv6=ipv6, uid=uid, gid=uid) + "\n")
    return 0


@o.command("validate")
@o.target_options(o.WRITE_TARGET)
@click.option("--probe-port", "--iptables-probe-port", "probe_port", default="15002", show_default=True,
              help="Port dialled on 127.0.0.6 (Istio's --iptables-probe-port).")
@click.option("--timeout", "--probe-timeout", "timeout", default="5s", show_default=True,
              help="How long to wait for the probe, e.g. 5s or 500ms (Istio's --probe-timeout).")
@click.option("--uid", default="1337", show_default=True, help="The proxy uid the probe client runs as.")
@o.flag("--ipv6", help="Probe over ::1/::6 (default: Istio's rule, IPv6 only when the pod has no IPv4).")
def validate_cmd(**params: Any) -> None:
    """istio-validation: a proxy-uid client dials 127.0.0.6:15002 inside the pod and must land on
    15001/15006 with that original destination. Exit 126 when it does not within --timeout."""
    click.get_current_context().exit(guarded(lambda: run(SimpleNamespace(**params))))
