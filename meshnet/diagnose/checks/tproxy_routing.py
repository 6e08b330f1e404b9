"""TPROXY rules without their policy route: marked packets are never delivered locally."""

from __future__ import annotations

import json
from typing import Any

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.rules_info import istio_tproxy_marks
from meshnet.errors import MeshnetError

_IP = {4: "ip", 6: "ip -6"}


def _ip_json(ctx: Context, fam: int, *args: str) -> list[dict[str, Any]]:
    """`ip -j` output: read through the namespace source, so a support bundle replays it."""
    cp = ctx.netns.run(["ip", f"-{fam}", "-j", *args])
    return json.loads(cp.stdout or "[]")


def _routed(rules: list[dict[str, Any]], routes: list[dict[str, Any]], mark: int) -> bool:
    """A `fwmark MARK lookup T` rule whose table T has `local default dev lo`."""
    for rule in rules:
        if "fwmark" not in rule or int(str(rule["fwmark"]), 0) != mark:
            continue
        table = str(rule.get("table", "main"))
        if any(r.get("type") == "local" and r.get("dst") == "default" and r.get("dev") == "lo"
               and str(r.get("table", "main")) == table for r in routes):
            return True
    return False


def run(ctx: Context) -> list[Finding]:
    marks = istio_tproxy_marks(ctx.live)
    if not marks:
        return []
    missing = []
    try:
        for fam, ms in sorted(marks.items()):
            rules, routes = _ip_json(ctx, fam, "rule", "show"), _ip_json(ctx, fam, "route", "show", "table", "all")
            missing += [(fam, mark) for mark in sorted(ms) if not _routed(rules, routes, mark)]
    except (MeshnetError, OSError, ValueError) as exc:
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
