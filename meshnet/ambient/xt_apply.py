"""Ambient mode on the iptables backends: every change of rules is ONE detached spawn.

* write:     both families' restores (iptc: its workers) in one detached `sh`, as sidecar mode;
* reconcile: per family one swap payload (backends/xt_swap.py: Istio's DROP guardrails in, the old
             rules out, the new ones in, the guardrails out), both families in one detached `sh`;
* cleanup:   per iptables variant one detached `sh` removing both families' rules (and complete
             sets of guardrails an interrupted Istio left).

Every payload is in the spawn's arguments before it starts and it runs in its own session, so a
SIGKILL of meshnet (or of its process group) cannot stop it between two commits; the spawn
inherits the namespace's writer lock fd, so the next writer waits until it is done.

iptables-nft leaves the tables and base chains it created (the guardrails' filter chains, tables
the new rules no longer use) empty behind; `python -m meshnet.ambient.prune_worker` deletes those in
the same spawn, after the restores, so no kill between the swap and the prune leaves them either.
"""

from __future__ import annotations

import sys

from meshnet.apply.backends.xtables import TIMEOUT_SECONDS, Xtables, families_script, script_failure, strip_counters
from meshnet.apply.netns import Netns, NetnsError, which
from meshnet.errors import ApplyError
from meshnet.lite import jsonlite as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.plan.model import Family, IptablesPlan

PRUNE_WORKER = (sys.executable, "-m", "meshnet.ambient.prune_worker")
GUARDRAIL_CHAINS = ("INPUT", "FORWARD", "OUTPUT")


def run_detached(netns: Netns, steps: list[tuple[list[str], str]], env: dict[str, str] | None = None) -> None:
    """Feed each payload to its command, in order, in one `setsid sh` (stops at the first failure)."""
    argv = ["sh", "-c", families_script([a for a, _ in steps]), "sh", *(p for _, p in steps)]
    if which("setsid"):
        argv = ["setsid", *argv]
    try:
        cp = netns.run(argv, timeout=TIMEOUT_SECONDS, check=False, env=env)
    except NetnsError as exc:
        raise ApplyError(str(exc)) from None
    if cp.returncode != 0:
        from meshnet.apply.backends.xtables import _describe

        step, code, stderr = script_failure(cp.returncode, cp.stderr)
        raise ApplyError(_describe(netns, steps[min(step, len(steps) - 1)][0], code, stderr))


def prune_step(prune: dict[Family, dict[str, list[str] | None]]) -> list[tuple[list[str], str]]:
    """The prune worker as a last step ([] when nothing is to be pruned)."""
    doc = {str(f): t for f, t in prune.items() if t}
    return [([*PRUNE_WORKER], json.dumps(doc))] if doc else []


def nft_chains(netns: Netns, fam: Family, table: str) -> set[str]:
    """Chains iptables-nft really created (its save output shows every builtin chain of a table)."""
    cp = netns.run(["nft", "-j", "list", "table", "ip6" if fam == 6 else "ip", table], check=False, timeout=30)
    if cp.returncode != 0:
        return set()
    return {item["chain"]["name"] for item in json.loads(cp.stdout).get("nftables", []) if "chain" in item}


# ------------------------------------------------------------------------------------ write
def write(netns: Netns, xt: Xtables, plan: IptablesPlan, iptc: bool) -> None:
    """Both families of a fresh namespace in one detached spawn (the caller rolls back on failure)."""
    if iptc:
        from meshnet.apply.backends.iptc_backend import write_families

        write_families(netns, {fam: plan.ops(fam) for fam in plan.families()})
        return
    from meshnet.plan.render_restore import render_family

    xt.restore_families(netns, {fam: render_family(plan, fam) for fam in plan.families()})


# ------------------------------------------------------------------------------------ reconcile
def reconcile(netns: Netns, xt: Xtables, plan: IptablesPlan, before: dict[Family, str]) -> None:
    """Old Istio rules (every family that holds some) out and the plan's in, behind the guardrails,
    one swap payload per family in one spawn; on a failure the saved tables are put back."""
    from meshnet.apply.backends import guardrails
    from meshnet.apply.backends.base import safely
    from meshnet.apply.backends.xt_backend import _undo_swap
    from meshnet.apply.backends.xt_cleanup import plan_removal
    from meshnet.apply.backends.xt_swap import swap_payload
    from meshnet.plan.render_restore import render_family

    steps: list[tuple[list[str], str]] = []
    prune: dict[Family, dict[str, list[str] | None]] = {}
    fams: list[Family] = []
    for fam, saved in before.items():
        text = strip_counters(saved)
        removal = plan_removal(text, fam)
        new = render_family(plan, fam) if plan.ops(fam) else ""
        if removal.empty and not new:
            continue
        fams.append(fam)
        steps.append((xt.restore_argv(fam), swap_payload(removal, new, guardrails.count_sets(text))))
        if xt.variant == "nft":  # what the guardrails created, and tables only the old rules used
            made = sorted(set(GUARDRAIL_CHAINS) - nft_chains(netns, fam, "filter"))
            tables: dict[str, list[str] | None] = {t: None for t in removal.tables()
                                                   if t not in plan.ruleset(fam).tables and t != "filter"}
            if made:
                tables["filter"] = made
            prune[fam] = tables
    try:
        run_detached(netns, steps + prune_step(prune), xt.lock_env(netns))
    except BaseException:
        for fam in fams:
            safely(lambda fam=fam: _undo_swap(netns, xt, plan, fam, before[fam]))
        raise


# ------------------------------------------------------------------------------------ cleanup
def cleanup(netns: Netns, xt: Xtables) -> list[str]:
    """Every Istio rule/chain of this variant, both families, and leftover guardrail sets: one spawn."""
    from meshnet.apply.backends import guardrails
    from meshnet.apply.backends.xt_cleanup import plan_removal
    from meshnet.apply.backends.xtables import legacy_tables

    removed: list[str] = []
    steps: list[tuple[list[str], str]] = []
    prune: dict[Family, dict[str, list[str] | None]] = {}
    for fam in (4, 6):
        if xt.variant == "legacy" and not legacy_tables(netns, fam):
            continue
        text = strip_counters(xt.save(netns, fam))
        removal = plan_removal(text, fam)
        drop = guardrails.removal_text(text)
        if removal.empty and not drop:
            continue
        steps.append((xt.restore_argv(fam), removal.restore_text() + drop))
        tool = xt.binary(fam, "")
        removed += [f"{tool} -t {t} {line}" for t in removal.tables() for line in removal.lines(t)]
        removed += [f"{tool} -t filter -D {line[3:]}" for line in guardrails.find_guardrails(text)]
        if xt.variant == "nft":
            tables: dict[str, list[str] | None] = {t: None for t in removal.tables()}
            if drop:
                tables["filter"] = list(GUARDRAIL_CHAINS)
            prune[fam] = tables
    if steps:
        run_detached(netns, steps + prune_step(prune), xt.lock_env(netns))
    return removed
