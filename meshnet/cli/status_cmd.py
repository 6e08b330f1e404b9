"""`meshnet status`: which backend holds Istio rules, drift against a spec, TPROXY routing."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any

import click

from meshnet.cli import options as o
from meshnet.cli.errors import diagnostic


def run(ns: Any) -> int:
    from meshnet.apply.applier import status
    from meshnet.cli.apply_cmd import istio_flags_given, spec_and_options
    from meshnet.cli.target import resolve_target

    netns = resolve_target(ns, inspect=True)
    spec = spec_and_options(ns, netns)[0] if (ns.spec_file or istio_flags_given(ns)) else None
    from meshnet.diagnose.checks.half_states import half_state_findings

    st = status(netns, spec)
    # Half states (leftover guardrails, orphan TPROXY routing, IPv4-only rules in a dual-stack pod)
    # are not drift against a spec: they are wrong whatever the spec, so they are checked always.
    findings, check_notes = half_state_findings(netns, spec)
    problems = [f for f in findings if f.is_problem]
    # Critical ones (a blackholed pod, TPROXY without routing) are never "in sync"; warnings are
    # listed (healthy: false) and left to doctor's verdict.
    broken = [f for f in problems if f.severity == "critical"]
    if ns.json:
        doc = {"namespace": netns.label, **st.to_dict(), "findings": [f.to_dict() for f in findings],
               "healthy": not problems}
        doc["in_sync"] = doc["in_sync"] and not broken
        doc["notes"] = [*doc["notes"], *check_notes]
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"namespace:      {netns.label}\n")
        sys.stdout.write(f"backend:        {', '.join(st.backends) or 'none (no Istio rules)'}\n")
        if spec is not None:
            sys.stdout.write(f"spec:           {'in sync' if not st.drift else f'{len(st.drift)} difference(s)'}\n")
        sys.stdout.write(f"tproxy routing: {'present' if st.tproxy_routing else 'absent'}\n")
        sys.stdout.write(f"::6 on lo:      {'present' if st.passthrough_v6 else 'absent'}\n")
        for line in (*st.notes, *st.drift):
            sys.stdout.write(f"  {line}\n")
        for f in findings:
            sys.stdout.write(f"[{f.severity}] {f.kind}: {f.summary}\n")
            sys.stdout.writelines(f"    evidence: {e}\n" for e in f.evidence)
        sys.stdout.writelines(f"note: {n}\n" for n in check_notes)
    return 1 if st.drift or broken else 0


@o.command("status")
@o.target_options(o.READ_TARGET)
@o.json_output
@o.spec_file
@o.resolv_conf
@o.istio_flags
def status_cmd(**params: Any) -> None:
    """Show the interception state of a pod's namespace: which backend holds Istio's rules, TPROXY
    routing, ::6, half states. With Istio flags or -f SPEC, compare it with that spec: exit 1 on drift
    or a critical half state, 2 when it could not be inspected."""
    click.get_current_context().exit(diagnostic(lambda: run(SimpleNamespace(**params)), prog="meshnet"))
