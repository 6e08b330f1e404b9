"""The nftables backend behind the seam (backends/base.py): Istio's `inet istio-proxy-*` tables.

read = `nft -j list ruleset inet`, compared with the plan; write = routing, then one transaction
(both families); reconcile = old tables out and new in, in the same transaction (no guardrail
needed), new routing before it and the stale one after; cleanup = delete every Istio table.
"""

from __future__ import annotations

from meshnet.apply.backends import NFTABLES, nftables, routing
from meshnet.apply.backends.base import Live, RoutingSteps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.apply.netns import Netns
    from meshnet.plan.nft_model import NftPlan
    from meshnet.spec.spec import Spec


class NftablesBackend(RoutingSteps):
    name = NFTABLES

    @staticmethod
    def plan(spec: Spec) -> NftPlan:
        from meshnet.plan.nft_builder import build_nft

        return build_nft(spec)

    def fast_write(self, netns: Netns, spec: Spec) -> bool:
        return False  # reading the inet tables is as cheap as a failed write

    def applied(self, netns: Netns, spec: Spec) -> str:
        return f"applied {len(self.plan(spec).ops)} nft rules in {netns.label} (one transaction)"

    def read(self, netns: Netns, spec: Spec) -> Live:
        plan = self.plan(spec)
        present = nftables.live(netns)
        if present.empty:
            return Live(False, [], (plan, present))
        return Live(True, nftables.drift(plan, present), (plan, present))

    def write(self, netns: Netns, spec: Spec, live: Live) -> str:
        from meshnet.plan.render_nft import render_nft

        plan, _ = live.before
        self._transaction(netns, spec, render_nft(plan))
        return self.applied(netns, spec)

    def reconcile(self, netns: Netns, spec: Spec, live: Live) -> str:
        from meshnet.plan.render_nft import render_nft

        plan, present = live.before
        # Old tables out and new ones in, in the same transaction: no window to guard.
        self._transaction(netns, spec, nftables.cleanup_text(present) + render_nft(plan))
        # The old rules' routing only once they are gone.
        self.remove_routing_not_of(netns, spec, routing.nft_marks(a for rs in present.chains.values() for r in rs
                                                                  for a in r.action))
        return f"replaced {len(plan.ops)} nft rules in {netns.label} (one transaction)"

    def repair(self, netns: Netns, spec: Spec, live: Live) -> list[str]:
        return []

    def _transaction(self, netns: Netns, spec: Spec, text: str) -> None:
        changes = routing.Changes()
        try:
            changes = self.ensure_routing(netns, spec)  # new routing before the rules that need it
            nftables.transaction(netns, text)
        except BaseException:
            routing.remove(netns, changes)
            raise

    def cleanup(self, netns: Netns, marks: set[int] | None = None, spec: Spec | None = None) -> list[str]:
        """Delete the sidecar's and ambient mode's Istio tables; `marks` collects the sidecar's TPROXY marks."""
        from meshnet.plan.nft_model import AMBIENT_PREFIX, TABLE_PREFIX

        removed: list[str] = []
        for prefix in (TABLE_PREFIX, AMBIENT_PREFIX):
            present = nftables.live(netns, prefix)
            if present.empty:
                continue
            if prefix == TABLE_PREFIX and marks is not None:
                marks |= routing.nft_marks(a for rules in present.chains.values() for r in rules for a in r.action)
            text = nftables.cleanup_text(present, prefix)
            nftables.transaction(netns, text)
            removed += [line for line in text.splitlines() if line.startswith("delete")]
        return removed
