"""The Backend seam: one class per backend behind one protocol; the applier is only the state machine.

    fast_write(netns, spec)      -> True when a fresh pod was written without reading (optional shortcut)
    read(netns, spec)            -> Live: is Istio state there (residue), how it differs (drift),
                                    and the backend's own snapshot (`before`, for rollback/positions)
    write(netns, spec, live)     -> message; writes a fresh pod, and on any failure (even an
                                    interrupt) removes exactly what it added
    reconcile(netns, spec, live) -> message; replaces drifted Istio state, never leaving guardrails
    repair(netns, spec, live)    -> lines; same spec already there: fix what is not rules (leftover guardrails)
    cleanup(netns, marks)        -> lines removed (every Istio trace this backend can see; the TPROXY
                                    marks its rules used go into `marks` for the routing cleanup)

plus the backend-independent routing steps (`ensure_routing`, `remove_stale_routing`) which the
state machine calls through the backend, so a stub backend (tests/unit/test_applier_state_machine.py)
exercises every decision without root. Implementations: backends/xt_backend.py (iptables-legacy,
iptables-nft, iptc) and backends/nft_backend.py (nftables).
"""

from __future__ import annotations

from meshnet.apply.backends import routing
from meshnet.lite.records import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Protocol

    from meshnet.apply.netns import Netns
    from meshnet.spec.spec import Spec

    class Backend(Protocol):
        name: str

        def fast_write(self, netns: Netns, spec: Spec) -> bool: ...
        def applied(self, netns: Netns, spec: Spec) -> str: ...
        def read(self, netns: Netns, spec: Spec) -> Live: ...
        def write(self, netns: Netns, spec: Spec, live: Live) -> str: ...
        def reconcile(self, netns: Netns, spec: Spec, live: Live) -> str: ...
        def repair(self, netns: Netns, spec: Spec, live: Live) -> list[str]: ...
        def cleanup(self, netns: Netns, marks: set[int] | None = None, spec: Spec | None = None) -> list[str]: ...
        def ensure_routing(self, netns: Netns, spec: Spec) -> routing.Changes: ...
        def remove_stale_routing(self, netns: Netns, spec: Spec) -> int: ...


@dataclass
class Live:
    residue: bool
    drift: list[str] = field(default_factory=list)
    before: Any = None


class RoutingSteps:
    """TPROXY routing and ::6, shared by every real backend (netlink/`ip` in the namespace)."""

    def ensure_routing(self, netns: Netns, spec: Spec) -> routing.Changes:
        """Add the TPROXY routing / ::6 address the spec needs and the namespace lacks."""
        changes = routing.Changes()
        try:
            if spec.enable_ipv6:
                routing.add_passthrough_v6(netns, changes)
            if spec.tproxy and spec.inbound_enabled:
                routing.add_tproxy(netns, spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6, changes)
        except BaseException:
            routing.remove(netns, changes)
            raise
        return changes

    def remove_stale_routing(self, netns: Netns, spec: Spec) -> int:
        """The spec's own TPROXY routing when the spec does not use TPROXY (left by a killed reconcile)."""
        if spec.tproxy and spec.inbound_enabled:
            return 0
        return routing.remove_all_tproxy(netns, pairs=[(spec.tproxy_mark, spec.tproxy_route_table)])

    def remove_routing_not_of(self, netns: Netns, spec: Spec, marks: Iterable[int] = ()) -> None:
        """After a reconcile: Istio's TPROXY routing (old `marks`, defaults) but the spec's own,
        which was added before the swap."""
        keep = (spec.tproxy_mark, spec.tproxy_route_table, spec.enable_ipv6) if spec.tproxy and spec.inbound_enabled \
            else (0, 0, False)
        routing.remove_all_tproxy(netns, marks, keep=keep)


def safely(fn: Any) -> list[str]:
    """Run a rollback step; its error becomes a line (rollback keeps going, the caller reports)."""
    try:
        fn()
    except Exception as exc:
        return [str(exc)]
    return []
