"""TPROXY rules without their policy route: marked packets are never delivered locally."""

from __future__ import annotations

import socket
from typing import Any

from meshnet.checks import Context, Finding
from meshnet.checks.rules_info import facts
from meshnet.errors import MeshnetError

RTN_LOCAL = 2
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_IP = {4: "ip", 6: "ip -6"}


def _routed(ipr: Any, fam: int, mark: int) -> bool:
    """A `fwmark MARK lookup T` rule whose table T has `local default dev lo`."""
    lo = ipr.link_lookup(ifname="lo")[0]
    for rule in ipr.get_rules(family=_AF[fam]):
        if rule.get_attr("FRA_FWMARK") != mark:
            continue
        table = rule.get_attr("FRA_TABLE") or rule["table"]
        if any(r["type"] == RTN_LOCAL and r["dst_len"] == 0 and r.get_attr("RTA_OIF") == lo
               for r in ipr.get_routes(family=_AF[fam], table=table)):
            return True
    return False


def run(ctx: Context) -> list[Finding]:
    marks = facts(ctx.live).tproxy_marks
    if not marks:
        return []
    try:
        with ctx.netns.ipr() as ipr:
            missing = [(fam, mark) for fam, ms in sorted(marks.items()) for mark in sorted(ms)
                       if not _routed(ipr, fam, mark)]
    except (MeshnetError, OSError) as exc:
        ctx.notes.append(f"TPROXY routing not read: {exc}")
        return []
    if not missing:
        return []
    return [Finding(
        "tproxy-routing-missing", "critical",
        "TPROXY rules mark inbound packets, but the fwmark policy rule or its local route is missing: "
        "intercepted connections are not delivered to the proxy",
        [f"IPv{fam}: TPROXY sets mark {mark:#x}, but there is no `{_IP[fam]} rule fwmark {mark:#x} lookup T` "
         "with `local default dev lo` in table T" for fam, mark in missing],
        "; ".join(f"{_IP[fam]} rule add fwmark {mark} lookup 133 && {_IP[fam]} route add local "
                  f"{'0.0.0.0/0' if fam == 4 else '::/0'} dev lo table 133" for fam, mark in missing)
        + " (with Istio's -t/-r values), or re-run istio-init")]
