"""The `iptc` backend: python-iptables (libiptc, legacy only), in a dedicated worker process.

python-iptables keeps one process-wide table handle per table name, bound to the namespace where
it was first opened, and is not thread-safe (python-deps.md: rules landed in the wrong namespace,
bus errors). So each write runs `python -m meshnet.apply.backends.iptc_worker` under nsenter: a fresh
process that lives entirely inside the target namespace, writes one family, and exits. Reading,
rollback and cleanup use iptables-legacy-save/-restore like the legacy backend.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from meshnet.apply.netns import Netns, NetnsError
from meshnet.errors import ApplyError
from meshnet.plan.model import Family, Op

TIMEOUT_SECONDS = 60.0


def ops_payload(family: Family, ops: Sequence[Op]) -> str:
    return json.dumps({"family": family, "ops": [
        {"table": op.rule.table, "chain": op.rule.chain, "position": op.position,
         "matches": [[m.kind, m.value, m.negated] for m in op.rule.matches],
         "target": [op.rule.target.name, *op.rule.target.args]} for op in ops]})


def write_family(netns: Netns, family: Family, ops: Sequence[Op]) -> None:
    write_families(netns, {family: ops})


def write_families(netns: Netns, ops: dict[Family, Sequence[Op]]) -> None:
    """One worker per family (libxtables cannot load IPv4 and IPv6 targets in one process), both
    started by one detached `sh` with every payload before it starts: a kill of meshnet never
    leaves IPv4 written and IPv6 not."""
    from meshnet.apply.backends.xtables import families_script, script_failure
    from meshnet.apply.netns import which

    fams = list(ops)
    worker = [sys.executable, "-m", "meshnet.apply.backends.iptc_worker"]
    argv = ["sh", "-c", families_script([worker] * len(fams)), "sh", *(ops_payload(f, ops[f]) for f in fams)]
    if which("setsid"):
        argv = ["setsid", *argv]
    try:
        cp = netns.run(argv, timeout=TIMEOUT_SECONDS, check=False)
    except NetnsError as exc:
        raise ApplyError(str(exc)) from None
    if cp.returncode != 0:
        step, _, stderr = script_failure(cp.returncode, cp.stderr)
        failed = fams[min(step, len(fams) - 1)]
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit {cp.returncode}"
        raise ApplyError(f"[{netns.label}] iptc worker (IPv{failed}): {detail}")
