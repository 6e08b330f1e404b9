"""`meshnet probe collision|interception`: packets that prove a pod's exposure.

Exit codes: 0 not exposed / captured as expected, 1 exposed (hang) or not captured, 2 error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from meshnet.cli import options as o
from meshnet.cli.conntrack_cmd import CmdError, _fail, _resolve


def _ports(value: str) -> list[int]:
    try:
        ports = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise CmdError(f"--ports must be a comma-separated list of ports, not {value!r}") from None
    if len(ports) < 2 or any(not 0 < p < 65536 for p in ports):
        raise CmdError("--ports needs at least two ports between 1 and 65535")
    return ports


def _run(fn: Any) -> None:
    from meshnet.apply.netns import NetnsError
    from meshnet.diagnose.probes.collision import ProbeError
    from meshnet.diagnose.probes.interception import ListenerBusy

    try:
        sys.exit(fn())
    except (CmdError, NetnsError, ProbeError, ListenerBusy) as e:
        _fail(str(e))
    except OSError as e:
        _fail(str(e.strerror or e))


@click.group("probe")
def probe_group() -> None:
    """Packet probes: collision exposure and interception."""


@probe_group.command("collision", cls=o.MeshnetCommand)
@click.option("--netns", required=True, help="The CLIENT namespace (name or path).")
@click.option("--target", required=True, help="Pod IP to probe.")
@click.option("--ports", default="9080,8080", show_default=True, help="Ports of the pod, first one is held.")
@click.option("--source-port", "sport", type=click.IntRange(1, 65534), default=40000, show_default=True,
              help="The one source port every SYN is sent from.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait per port.")
@click.option("--mode", type=click.Choice(["both", "syn", "connect"]), default="both", show_default=True,
              help="syn: raw SYNs from --source-port; connect: real connect() calls; both (connect: next port).")
@o.flag("--json", "as_json", help="Machine-readable output (JSON).")
def collision_cmd(netns: str, target: str, ports: str, sport: int, timeout: float, mode: str,
                  as_json: bool) -> None:
    """Send SYNs from one source port to each port; report SYN-ACK, challenge ACK or silence."""

    def run() -> int:
        import ipaddress

        try:
            ipaddress.ip_address(target)
        except ValueError:
            raise CmdError(f"--target must be an IP address, not {target!r}") from None
        plist = _ports(ports)
        ns = _resolve(netns, None)
        from meshnet.diagnose.probes.collision import run_collision_probe

        out = run_collision_probe(ns, target, plist, sport, timeout, mode)
        if as_json:
            click.echo(json.dumps(out, indent=2))
        else:
            for r in out.get("syn", []):
                click.echo(f"syn     :{r['port']:<5} from {out['sport']}: {r['result']}"
                           + (f" (from :{r['from_port']})" if r.get("from_port") else "")
                           + f" after {r['after_s']}s")
            for r in out.get("connect", []):
                click.echo(f"connect :{r['port']:<5} from {out['connect_sport']}: {r['result']} "
                           f"after {r['after_s']}s")
            click.echo(f"verdict: {out['verdict']}: {out['explanation']}")
        return {"ok": 0, "hang": 1}.get(out["verdict"], 2)

    _run(run)


@probe_group.command("interception", cls=o.MeshnetCommand)
@click.option("--netns", required=True, help="The POD namespace (name or path).")
@click.option("--pod-ip", help="The pod's address, for the inbound probe.")
@click.option("--peer-netns", help="A namespace that reaches the pod, to send the inbound probe from.")
@click.option("--target", help="An address the pod routes to (not loopback), for the outbound probe.")
@click.option("--inbound-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="The pod port the inbound probe dials.")
@click.option("--outbound-port", type=click.IntRange(1, 65535), default=80, show_default=True,
              help="The destination port of the outbound probe.")
@o.flag("--json", "as_json", help="Machine-readable output (JSON).")
def interception_cmd(netns: str, pod_ip: str | None, peer_netns: str | None, target: str | None,
                     inbound_port: int, outbound_port: int, as_json: bool) -> None:
    """Show whether inbound and outbound capture happen (for pods with no proxy running yet)."""

    def run() -> int:
        if not (peer_netns and pod_ip) and not target:
            raise CmdError("give --peer-netns and --pod-ip (inbound) and/or --target (outbound)")
        pod = _resolve(netns, None)
        peer = _resolve(peer_netns, None) if peer_netns else None
        from meshnet.diagnose.probes.interception import probe_interception

        out = probe_interception(pod, pod_ip, peer, target, inbound_port, outbound_port)
        if as_json:
            click.echo(json.dumps(out, indent=2))
        else:
            for k, v in out.items():
                click.echo(f"{k}: {v['text']}")
        return 0 if all(v["captured"] for v in out.values()) else 1

    _run(run)


if __name__ == "__main__":
    probe_group()
