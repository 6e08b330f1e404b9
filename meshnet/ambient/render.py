"""Ambient plans as text: Istio's recorded transcript, restore payloads, nft transactions."""

from __future__ import annotations

from meshnet.plan.model import IptablesPlan
from meshnet.plan.render_restore import render_family


def render_transcript(plan: IptablesPlan) -> str:
    """istio-cni's run on a clean namespace: both saves (VerifyIptablesState), then one restore per family."""
    parts = ["iptables-save\nip6tables-save\n", render_family(plan, 4)]
    if plan.ipv6:
        parts.append(render_family(plan, 6))
    return "".join(parts)


def render_restore(plan: IptablesPlan, family: str = "all") -> str:
    parts = []
    if family in ("4", "all"):
        parts.append(render_family(plan, 4))
    if family in ("6", "all") and plan.ipv6:
        parts.append(("# ip6tables-restore\n" if family == "all" else "") + render_family(plan, 6))
    return "".join(parts)
