"""The target of a command: the pod namespace (`--netns NAME|PATH` or `--pid PID`, declared in
cli/options.py; the ambient CLI's in ambient/options.py) resolved, and the backend choices.

Shared by `meshnet apply`, `status`, `cleanup`, `validate` and the ambient commands; a module of its
own so that those commands import it without importing each other (no import cycles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshnet.errors import UsageError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

BACKEND_CHOICES = ("auto", "iptables-legacy", "iptables-nft", "nftables", "iptc")


def resolve_target(ns: Any, network_namespace: str = "", inspect: bool = False) -> Netns:
    """Exactly one explicit target: writing commands never default to the caller's own namespace.

    inspect=True (status): neither given means the current namespace, capabilities checked up front.
    """
    from meshnet.apply.netns import Netns

    given = [v for v in (ns.netns, network_namespace or None) if v]
    if len(given) > 1 and given[0] != given[1]:
        raise UsageError("give the namespace once (--netns or --network-namespace)")
    if given and ns.pid is not None:
        raise UsageError("give either --netns or --pid, not both")
    if inspect:
        from meshnet.cli.inspect_target import inspect_target

        return inspect_target(given[0] if given else None, ns.pid)
    if not given and ns.pid is None:
        raise UsageError("missing target: --netns NAME|PATH or --pid PID (apply, cleanup and validate never "
                         "default to the namespace meshnet runs in; inside a pod, use meshnet istio-iptables)")
    return Netns.resolve(netns=given[0] if given else None, pid=ns.pid)


def refuse_own_namespace(netns: Netns) -> None:
    """Writing commands never program the namespace meshnet itself runs in (e.g. `--pid 1` on a
    node would rewrite the host's rules); inside a pod, `meshnet istio-iptables` is the tool."""
    if netns.is_current():
        raise UsageError(f"{netns.label} is the network namespace meshnet runs in: refusing to change it "
                         f"(inside a pod, use meshnet istio-iptables)")
