"""TPROXY policy routing and the IPv6 inbound-passthrough address, as Istio sets them up.

* `ip rule add fwmark MARK lookup TABLE` + `ip route add local 0.0.0.0/0 dev lo table TABLE`
  (and `::/0` for IPv6) through pyroute2 bound to the namespace. pyroute2 does not pick the
  scope iproute2 would: a local route needs scope host explicitly.
* `::6/128` on lo for IPv6 pods (the IPv6 twin of 127.0.0.6). This uses `ip` rather than
  pyroute2 so the common REDIRECT path does not pay pyroute2's ~140 ms import.

Every add is recorded in a `Changes` so a failed apply can remove exactly what it added.
"""

from __future__ import annotations

from meshnet.apply.netns import Netns, NetnsError
from meshnet.errors import ApplyError
from meshnet.lite.records import dataclass, field

TYPE_CHECKING = False  # `typing` and `socket` stay off the start-up path (~7 ms)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

AF_INET, AF_INET6 = 2, 10  # AF_INET / AF_INET6 on Linux

PASSTHROUGH_V6 = "::6"
RT_SCOPE_HOST = 254
RTN_LOCAL = 2
_DEFAULT = {AF_INET: "0.0.0.0/0", AF_INET6: "::/0"}


@dataclass
class Changes:
    """What this run added (so that rollback removes exactly that)."""

    rules: list[tuple[int, int, int, int]] = field(default_factory=list)  # (family, mark, table, priority)
    routes: list[tuple[int, int]] = field(default_factory=list)  # (family, table)
    passthrough_v6: bool = False

    @property
    def empty(self) -> bool:
        return not (self.rules or self.routes or self.passthrough_v6)


def _families(ipv6: bool) -> tuple[int, ...]:
    return (AF_INET, AF_INET6) if ipv6 else (AF_INET,)


def _lo_index(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise ApplyError("no loopback interface in the namespace")
    return int(found[0])


def _has_rule(ipr: Any, family: int, mark: int, table: int) -> bool:
    """Istio's rule is there: `fwmark 0x539/0xff` or `fwmark 0x539 iif eth1` route other packets."""
    return any((m, t) == (mark, table) for m, t, _ in _fwmark_rules(ipr, family, exact=True))


def _default_priority(ipr: Any, family: int) -> int:
    """What the kernel picks when no priority is given (iproute2 and Istio's netlink send none):
    one below the first rule after `lookup local`. pyroute2 would otherwise always send 32000."""
    prefs = sorted(int(r.get_attr("FRA_PRIORITY") or 0) for r in ipr.get_rules(family=family))
    above_zero = [p for p in prefs if p > 0]
    return above_zero[0] - 1 if above_zero and above_zero[0] > 1 else 32765


def _local_default(ipr: Any, family: int, table: int, lo: int) -> list[Any]:
    return [r for r in ipr.get_routes(family=family, table=table)
            if r["type"] == RTN_LOCAL and r["dst_len"] == 0 and r.get_attr("RTA_OIF") == lo]


def add_tproxy(netns: Netns, mark: int, table: int, ipv6: bool, changes: Changes) -> None:
    """Add the policy rule and local route per family, skipping those already present."""
    from pyroute2.netlink.exceptions import NetlinkError  # pyroute2 is loaded by ipr() anyway

    try:
        with netns.ipr() as ipr:
            lo = _lo_index(ipr)
            for fam in _families(ipv6):
                if not _local_default(ipr, fam, table, lo):
                    ipr.route("add", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=table,
                              scope=RT_SCOPE_HOST)
                    changes.routes.append((fam, table))
                if not _has_rule(ipr, fam, mark, table):
                    prio = _default_priority(ipr, fam)
                    ipr.rule("add", family=fam, fwmark=mark, table=table, priority=prio)
                    changes.rules.append((fam, mark, table, prio))
    except (OSError, NetlinkError, NetnsError) as exc:
        doing = f"TPROXY routing (ip rule fwmark {mark} lookup {table})"
        raise ApplyError(f"[{netns.label}] {_eperm_reason(exc, doing) or f'{doing}: {exc}'}") from None


def _eperm_reason(exc: BaseException, doing: str) -> str | None:
    """The missing capability behind a netlink EPERM, if that is what it was."""
    if getattr(exc, "code", None) == 1 or getattr(exc, "errno", None) == 1:  # EPERM
        from meshnet.apply import caps

        return caps.explain(doing, [caps.NET_ADMIN])
    return None


def tproxy_present(netns: Netns, mark: int | None = None, table: int | None = None, ipv6: bool = False) -> bool:
    """True when (some, or the given) fwmark rule leads to a table whose default is local via lo."""
    if not _any_fwmark_rule(netns):
        return False
    with netns.ipr() as ipr:
        lo = _lo_index(ipr)
        for fam in _families(ipv6):
            found = [(m, t) for m, t, _ in _fwmark_rules(ipr, fam, exact=True)
                     if (mark is None or m == mark) and (table is None or t == table)
                     and _local_default(ipr, fam, t, lo)]
            if not found:
                return False
    return True


def _fwmark_rules(ipr: Any, family: int, exact: bool = False) -> list[tuple[int, int, int]]:
    """(mark, table, priority) of every fwmark rule (`exact`: only those in Istio's shape);
    deleting one needs its priority too."""
    out = []
    for rule in ipr.get_rules(family=family):
        mark = rule.get_attr("FRA_FWMARK")
        if mark is not None and (not exact or _istio_shaped(rule)):
            out.append((int(mark), int(rule.get_attr("FRA_TABLE") or rule["table"]),
                        int(rule.get_attr("FRA_PRIORITY") or 0)))
    return out


def remove(netns: Netns, changes: Changes) -> None:
    """Undo `changes` (rollback). Missing entries are fine: the goal is their absence."""
    if changes.rules or changes.routes:
        with netns.ipr() as ipr:
            lo = _lo_index(ipr)
            for fam, mark, table, prio in reversed(changes.rules):
                _quiet(ipr.rule, "del", family=fam, fwmark=mark, table=table, priority=prio)
            for fam, table in reversed(changes.routes):
                _quiet(ipr.route, "del", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=table,
                       scope=RT_SCOPE_HOST)
    if changes.passthrough_v6:
        del_passthrough_v6(netns)


def _any_fwmark_rule(netns: Netns) -> bool:
    """A cheap pre-check with iproute2: does any policy rule match on a firewall mark?"""
    for fam_flag in ("-4", "-6"):
        try:
            out = netns.run(["ip", fam_flag, "rule", "show"], check=False).stdout
        except NetnsError:
            return True  # cannot tell cheaply: let the full netlink check decide
        if "fwmark" in out:
            return True
    return False


# Istio's defaults (--istio-inbound-tproxy-mark / --istio-inbound-tproxy-route-table): what cleanup
# removes when neither live Istio rules nor a spec say more.
DEFAULT_TPROXY = (1337, 133)
OUTBOUND_MARK = 1338  # Istio's mark for the proxy's own traffic over lo (mangle OUTPUT / nft output)
FR_ACT_TO_TBL = 1
FULL_MASK = 0xFFFFFFFF
# Everything `ip rule add fwmark M lookup T` (Istio's only form) makes the kernel report.
_ISTIO_RULE_ATTRS = frozenset({"FRA_TABLE", "FRA_SUPPRESS_PREFIXLEN", "FRA_PROTOCOL", "FRA_PRIORITY",
                               "FRA_FWMARK", "FRA_FWMASK"})


def _istio_shaped(rule: Any) -> bool:
    """`fwmark M lookup T` and nothing else: no mask, selector, inversion or other action."""
    if rule["action"] != FR_ACT_TO_TBL or rule["flags"] or rule["src_len"] or rule["dst_len"] or rule["tos"]:
        return False
    names = {name for name, _ in rule["attrs"]}
    if not names <= _ISTIO_RULE_ATTRS:
        return False
    mask = rule.get_attr("FRA_FWMASK")
    suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
    return (mask is None or mask == FULL_MASK) and (suppress is None or suppress == FULL_MASK)


def remove_all_tproxy(netns: Netns, marks: Iterable[int] = (), pairs: Iterable[tuple[int, int]] = (),
                      keep: tuple[int, int, bool] | None = None) -> int:
    """Remove TPROXY policy routing in Istio's exact shape, and only Istio's.

    A rule goes when it is exactly `fwmark M lookup T`, its table T holds nothing but
    `local default dev lo`, and either M is a mark the live Istio rules use (`marks`, any T) or
    (M, T) is Istio's pair from the spec (`pairs`, Istio's defaults 1337/133 always count).
    `fwmark 0x1 lookup 100` with the same local route, a masked mark or an `iif` selector stay.
    `keep` = (mark, table, ipv6): the routing a reconciled spec uses, left in place (reconcile adds
    the new routing before the swap and removes only the stale rest after it).
    Returns how many rules were removed (their routes go too when no other rule uses the table).
    """
    live_marks = set(marks)
    wanted = {*pairs, DEFAULT_TPROXY}
    istio_tables = {t for _, t in wanted}
    if not _any_fwmark_rule(netns) and not _local_default_in(netns, istio_tables):
        return 0  # the usual REDIRECT pod: no need to pay pyroute2's ~150 ms import
    removed = 0
    with netns.ipr() as ipr:
        lo = _lo_index(ipr)
        for fam in (AF_INET, AF_INET6):
            _drop_unreferenced_local(ipr, fam, istio_tables, lo)
            for rule in [r for r in ipr.get_rules(family=fam) if r.get_attr("FRA_FWMARK") is not None]:
                mark = int(rule.get_attr("FRA_FWMARK"))
                table = int(rule.get_attr("FRA_TABLE") or rule["table"])
                prio = int(rule.get_attr("FRA_PRIORITY") or 0)
                if not _istio_shaped(rule) or (mark not in live_marks and (mark, table) not in wanted):
                    continue
                if keep is not None and (mark, table) == keep[:2] and fam in _families(keep[2]):
                    continue
                routes = ipr.get_routes(family=fam, table=table)
                local = _local_default(ipr, fam, table, lo)
                if not local or len(routes) != len(local):
                    continue
                _quiet(ipr.rule, "del", family=fam, fwmark=mark, table=table, priority=prio)
                if not any(t == table for _, t, _ in _fwmark_rules(ipr, fam)):
                    _quiet(ipr.route, "del", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=table,
                           scope=RT_SCOPE_HOST)
                removed += 1
    return removed


def _local_default_in(netns: Netns, tables: set[int]) -> bool:
    """Cheap pre-check: does one of Istio's tables hold a `local default dev lo` route?"""
    for fam_flag in ("-4", "-6"):
        for table in sorted(tables):
            try:
                out = netns.run(["ip", fam_flag, "route", "show", "table", str(table)], check=False).stdout
            except NetnsError:
                return True
            if "local default dev lo" in out:
                return True
    return False


def _drop_unreferenced_local(ipr: Any, fam: int, tables: set[int], lo: int) -> None:
    """A writer killed between adding a table's local route and its rule leaves the route alone: inert,
    but ours when the table is Istio's (spec or default), holds only `local default dev lo` and no
    policy rule points at it. Anything else in the table, or any rule using it, keeps it."""
    referenced = {int(r.get_attr("FRA_TABLE") or r["table"]) for r in ipr.get_rules(family=fam)}
    for table in tables - referenced:
        local = _local_default(ipr, fam, table, lo)
        if local and len(ipr.get_routes(family=fam, table=table)) == len(local):
            _quiet(ipr.route, "del", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=table,
                   scope=RT_SCOPE_HOST)


def nft_marks(actions: Iterable[str]) -> set[int]:
    """TPROXY marks Istio's native nft rules set (`meta mark set 1337`), from their action texts;
    not the outbound mark 1338, which no policy rule of Istio's uses."""
    out: set[int] = set()
    for text in actions:
        words = text.split()
        if words[:3] == ["meta", "mark", "set"] and len(words) == 4 and words[3].isdigit():
            out.add(int(words[3]))
    out.discard(OUTBOUND_MARK)
    return out


def _quiet(fn: Any, *args: Any, **kw: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fn(*args, **kw)
    except (OSError, NetlinkError):
        pass  # already gone: absence is the goal


def has_passthrough_v6(netns: Netns) -> bool:
    try:
        text = netns.read_proc_net("if_inet6")
    except FileNotFoundError:
        return False  # IPv6 disabled
    rows = (line.split() for line in text.splitlines())
    return any(len(f) >= 6 and f[-1] == "lo" and int(f[0], 16) == 6 for f in rows)


def add_passthrough_v6(netns: Netns, changes: Changes) -> None:
    if has_passthrough_v6(netns):
        return
    try:
        netns.run(["ip", "-6", "addr", "add", f"{PASSTHROUGH_V6}/128", "dev", "lo"], timeout=30)
    except NetnsError as exc:
        from meshnet.apply import caps

        why = caps.explain(f"adding {PASSTHROUGH_V6}/128 to lo", [caps.NET_ADMIN]) if caps.denied(str(exc)) else None
        raise ApplyError(f"[{netns.label}] {why}" if why else f"cannot add {PASSTHROUGH_V6}/128 to lo: {exc}") from None
    changes.passthrough_v6 = True


def del_passthrough_v6(netns: Netns) -> bool:
    if not has_passthrough_v6(netns):
        return False
    netns.run(["ip", "-6", "addr", "del", f"{PASSTHROUGH_V6}/128", "dev", "lo"], check=False, timeout=30)
    return True
