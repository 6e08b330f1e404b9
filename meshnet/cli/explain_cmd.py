"""`meshnet explain PACKET`: the path a packet takes through a pod's live rules, and its verdict."""

from __future__ import annotations

import json
import sys

import click

from meshnet.cli import options as o
from meshnet.cli.errors import diagnostic


def run_trace(packet_text: str, netns_name: str | None, pid: int | None, as_json: bool) -> int:
    from meshnet.cli.inspect_target import inspect_target
    from meshnet.diagnose.explain.packet import parse_packet
    from meshnet.diagnose.explain.trace import trace_packet
    from meshnet.errors import UsageError

    packet = parse_packet(packet_text)
    if netns_name is not None and pid is not None:
        raise UsageError("give either --netns or --pid, not both")
    netns = inspect_target(netns_name, pid)  # neither: the namespace meshnet runs in
    explanations, traces, sent = trace_packet(netns, packet)
    if as_json:
        sys.stdout.write(json.dumps({"netns": netns.label, "sent": sent,
                                     "results": [{**e.to_dict(), "trace": t.to_dict()}
                                                 for e, t in zip(explanations, traces, strict=True)]},
                                    indent=2) + "\n")
    else:
        for e, t in zip(explanations, traces, strict=True):
            sys.stdout.write("\n".join([*e.lines(), *t.lines()]) + "\n")
    # 0: the kernel took the predicted path; 1: it did not (a finding), or the prediction is uncertain.
    bad = any(not t.matches for t in traces) or any(e.verdict is None or e.verdict.kind == "uncertain"
                                                    for e in explanations)
    return 1 if bad else 0


def run_explain(packet_text: str, netns_name: str | None, pid: int | None, as_json: bool) -> int:
    from meshnet.cli.inspect_target import inspect_target
    from meshnet.diagnose.explain.iptables import explain_live
    from meshnet.diagnose.explain.packet import parse_packet
    from meshnet.errors import UsageError

    packet = parse_packet(packet_text)
    if netns_name is not None and pid is not None:
        raise UsageError("give either --netns or --pid, not both")
    netns = inspect_target(netns_name, pid)  # neither: the namespace meshnet runs in
    results = explain_live(netns, packet)
    if as_json:
        sys.stdout.write(json.dumps({"netns": netns.label, "results": [r.to_dict() for r in results]}, indent=2)
                         + "\n")
    else:
        for r in results:
            sys.stdout.write("\n".join(r.lines()) + "\n")
    # Exit 0 for any known verdict; 1 when it cannot be known (unsupported rules, unreadable state).
    return 1 if any(r.verdict is None or r.verdict.kind == "uncertain" for r in results) else 0


@o.command("explain")
@click.argument("packet")
@o.target_options(o.READ_TARGET)
@o.flag("--json", "as_json", help="Machine-readable output (JSON).")
@o.flag("--trace", help="Send one real packet matching PACKET and compare the kernel's nftrace path with the "
                        "prediction.")
def explain_cmd(packet: str, netns: str | None, pid: int | None, as_json: bool, trace: bool) -> None:
    """Follow PACKET through the pod's live rules, e.g.

    'tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000' or 'tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0'.
    Options in PACKET: uid= gid= iface= oif= state=NEW|ESTABLISHED|RELATED|INVALID mark= ctmark=.
    """
    run = run_trace if trace else run_explain
    sys.exit(diagnostic(lambda: run(packet, netns, pid, as_json), prog="meshnet explain"))
