"""TPROXY policy routing without the TPROXY rules that need it: a half-removed or half-applied pod.

Istio's TPROXY mode pairs mangle rules that set a mark (`TPROXY --tproxy-mark 0x539`) with
`ip rule fwmark 0x539 lookup 133` + `local default dev lo table 133`, per family. A rollback or a
cleanup that stopped halfway leaves the routing alone (or the rule without its route, or an
IPv6 rule after an IPv4-only reconcile). Istio's shape is its mark (the spec's, else 1337) or
its table (the spec's, else 133); routing with other values is someone else's and only noted.
The reverse half (TPROXY rules without routing) is `tproxy_routing`.
"""

from __future__ import annotations

from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks.rules_info import facts
from meshnet.errors import MeshnetError
from meshnet.lite import jsonlite as json
from meshnet.lite.records import dataclass

ISTIO_MARK, ISTIO_TABLE = 1337, 133
AMBIENT_MARK, AMBIENT_TABLE = 0x111, 100  # istio-cni's in-pod routing (meshnet.ambient.spec)
_NAMED_TABLES = {"local": 255, "main": 254, "default": 253, "unspec": 0}
_IP = {4: "ip", 6: "ip -6"}


@dataclass(frozen=True)
class FwmarkRule:
    family: int
    mark: int
    table: int

    def text(self) -> str:
        return f"{_IP[self.family]} rule fwmark {self.mark:#x} lookup {self.table}"


def _table(value: object) -> int:
    text = str(value)
    return _NAMED_TABLES.get(text, int(text) if text.isdigit() else -1)


def _ip_json(ctx: Context, family: int, *args: str) -> list[dict[str, object]]:
    """`ip -j` through the namespace source (the same argv as tproxy_routing: a bundle replays both)."""
    doc = json.loads(ctx.netns.run(["ip", f"-{family}", "-j", *args]).stdout or "[]")
    return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []


def read_routing(ctx: Context, family: int) -> tuple[list[FwmarkRule], set[int]]:
    """fwmark rules, and the tables holding `local default dev lo`, of one family."""
    rules = [FwmarkRule(family, int(str(r["fwmark"]).split("/")[0], 0), _table(r.get("table", "main")))
             for r in _ip_json(ctx, family, "rule", "show") if "fwmark" in r]
    local = {_table(r.get("table", "main")) for r in _ip_json(ctx, family, "route", "show", "table", "all")
             if r.get("type") == "local" and r.get("dst") == "default" and r.get("dev") == "lo"}
    return rules, local


def _ambient_rules_present(ctx: Context) -> bool:
    """Ambient mode's chains in any backend: ISTIO_PRERT (iptables) or the istio-ambient-* tables (nft)."""
    for rulesets in ctx.live.xtables.values():
        if any(("mangle", "ISTIO_PRERT") in rs.istio_chains() for rs in rulesets.values()):
            return True
    nft = ctx.live.nft
    return nft is not None and ("mangle", "istio-prerouting") in nft.chains


def run(ctx: Context) -> list[Finding]:
    marks = facts(ctx.live).tproxy_marks
    istio_mark = ctx.spec.tproxy_mark if ctx.spec is not None else ISTIO_MARK
    istio_table = ctx.spec.tproxy_route_table if ctx.spec is not None else ISTIO_TABLE
    orphans: list[str] = []
    foreign: list[str] = []
    for fam in (4, 6):
        try:
            rules, local = read_routing(ctx, fam)
        except (MeshnetError, OSError, ValueError) as exc:
            ctx.notes.append(f"IPv{fam} policy routing not read: {exc}")
            continue
        used = marks.get(fam, set())
        ambient = _ambient_rules_present(ctx)
        for rule in rules:
            if rule.mark in used:
                continue  # a TPROXY rule of this family needs it
            if (rule.mark, rule.table) == (AMBIENT_MARK, AMBIENT_TABLE):
                if not ambient:  # ambient mode's routing (fwmark 0x111/0xfff lookup 100) without its rules
                    orphans.append(f"{rule.text()}: ambient mode's policy routing, but no ambient rules "
                                   f"(ISTIO_PRERT / istio-ambient-*) in the namespace")
                continue
            shape = "with" if rule.table in local else "without"
            line = f"{rule.text()} ({shape} `local default dev lo` in table {rule.table}), no TPROXY rule sets " \
                   f"mark {rule.mark:#x} in IPv{fam}"
            if rule.mark == istio_mark or rule.table == istio_table:
                orphans.append(line)
            elif rule.table in local:
                foreign.append(line)
        if istio_table in local and not any(r.table == istio_table for r in rules) and not used:
            orphans.append(f"{_IP[fam]} route local default dev lo table {istio_table} with no fwmark rule "
                           "leading to it")
    out: list[Finding] = []
    if orphans:
        out.append(Finding(
            "tproxy-routing-orphan", "warning",
            "Istio's TPROXY policy routing is left without the TPROXY rules it belongs to (an interrupted apply, "
            "rollback or cleanup): it will clash with the next TPROXY setup and misroute marked packets",
            orphans,
            "`meshnet cleanup` in the pod's namespace (or re-apply the TPROXY spec); by hand: ip rule del fwmark "
            "MARK lookup TABLE and ip route del local default dev lo table TABLE (ip -6 for IPv6)"))
    if foreign:
        out.append(Finding(
            "tproxy-like-routing", "info",
            "policy routing shaped like TPROXY's, with a mark and table that are not Istio's: someone else's, "
            "left alone by meshnet", foreign))
    return out
