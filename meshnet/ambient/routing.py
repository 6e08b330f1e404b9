"""In-pod policy routing of ambient mode, as istio-cni's netlink calls set it up.

`ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` and `ip route replace local 0.0.0.0/0 dev lo
table 100`, and the IPv6 pair when IPv6 is on (the route only when lo has IPv6). Every add is
recorded in a `routing.Changes`, so a failed apply removes exactly what it added.
"""

from __future__ import annotations

from meshnet.ambient.spec import ROUTE_TABLE, RULE_PRIORITY, TPROXY_MARK, TPROXY_MASK
from meshnet.apply.backends.routing import (
    _DEFAULT,
    AF_INET,
    AF_INET6,
    RT_SCOPE_HOST,
    Changes,
    _lo_index,
    _local_default,
)
from meshnet.apply.netns import Netns, NetnsError
from meshnet.errors import ApplyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _families(netns: Netns, ipv6: bool) -> tuple[int, ...]:
    return (AF_INET, AF_INET6) if ipv6 else (AF_INET,)


def _lo_has_ipv6(netns: Netns) -> bool:
    try:
        return netns.sysctl("net.ipv6.conf.lo.disable_ipv6") != "1"
    except Exception:  # no IPv6 at all in this kernel / namespace
        return False


def _our_rules(ipr: Any, family: int) -> list[Any]:
    return [r for r in ipr.get_rules(family=family)
            if r.get_attr("FRA_FWMARK") == TPROXY_MARK and r.get_attr("FRA_FWMASK") == TPROXY_MASK
            and int(r.get_attr("FRA_TABLE") or r["table"]) == ROUTE_TABLE
            and int(r.get_attr("FRA_PRIORITY") or 0) == RULE_PRIORITY]


def add(netns: Netns, ipv6: bool, changes: Changes) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with netns.ipr() as ipr:
            lo = _lo_index(ipr)
            for fam in _families(netns, ipv6):
                if (fam == AF_INET or _lo_has_ipv6(netns)) and not _local_default(ipr, fam, ROUTE_TABLE, lo):
                    ipr.route("add", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=ROUTE_TABLE,
                              scope=RT_SCOPE_HOST)
                    changes.routes.append((fam, ROUTE_TABLE))
                if not _our_rules(ipr, fam):
                    ipr.rule("add", family=fam, fwmark=TPROXY_MARK, fwmask=TPROXY_MASK, table=ROUTE_TABLE,
                             priority=RULE_PRIORITY)
                    changes.rules.append((fam, TPROXY_MARK, ROUTE_TABLE, RULE_PRIORITY))
    except (OSError, NetlinkError, NetnsError) as exc:
        raise ApplyError(f"[{netns.label}] ambient routing (fwmark 0x111/0xfff lookup 100): {exc}") from None


def undo(netns: Netns, changes: Changes) -> None:
    """Rollback of `add`: the rule is deleted with its mask (without it the kernel matches mask 0xffffffff)."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not (changes.rules or changes.routes):
        return
    with netns.ipr() as ipr:
        lo = _lo_index(ipr)
        for fam, mark, table, prio in reversed(changes.rules):
            try:
                ipr.rule("del", family=fam, fwmark=mark, fwmask=TPROXY_MASK, table=table, priority=prio)
            except (OSError, NetlinkError):
                pass  # already gone
        for fam, table in reversed(changes.routes):
            try:
                ipr.route("del", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=table, scope=RT_SCOPE_HOST)
            except (OSError, NetlinkError):
                pass


def missing(netns: Netns, ipv6: bool) -> list[str]:
    """What of the routing is absent, one line each (empty = all there)."""
    out: list[str] = []
    with netns.ipr() as ipr:
        lo = _lo_index(ipr)
        for fam in _families(netns, ipv6):
            name = "-6 " if fam == AF_INET6 else ""
            if not _our_rules(ipr, fam):
                out.append(f"~ ip {name}rule fwmark 0x111/0xfff pref 32764 lookup 100 missing")
            if (fam == AF_INET or _lo_has_ipv6(netns)) and not _local_default(ipr, fam, ROUTE_TABLE, lo):
                out.append(f"~ ip {name}route local {_DEFAULT[fam]} dev lo table 100 missing")
    return out


def remove_all(netns: Netns, families: tuple[int, ...] = (AF_INET, AF_INET6)) -> list[str]:
    """Cleanup: our rule in these families, and table 100's local default when nothing else uses it."""
    from pyroute2.netlink.exceptions import NetlinkError

    removed: list[str] = []
    with netns.ipr() as ipr:
        lo = _lo_index(ipr)
        for fam in families:
            name = "-6 " if fam == AF_INET6 else ""
            for _ in _our_rules(ipr, fam):
                try:
                    ipr.rule("del", family=fam, fwmark=TPROXY_MARK, fwmask=TPROXY_MASK, table=ROUTE_TABLE,
                             priority=RULE_PRIORITY)
                    removed.append(f"ip {name}rule del fwmark 0x111/0xfff pref 32764 lookup 100")
                except (OSError, NetlinkError):
                    pass
            others = [r for r in ipr.get_rules(family=fam) if int(r.get_attr("FRA_TABLE") or r["table"]) == ROUTE_TABLE]
            routes = ipr.get_routes(family=fam, table=ROUTE_TABLE)
            local = _local_default(ipr, fam, ROUTE_TABLE, lo)
            if local and not others and len(routes) == len(local):
                try:
                    ipr.route("del", family=fam, dst=_DEFAULT[fam], type="local", oif=lo, table=ROUTE_TABLE,
                              scope=RT_SCOPE_HOST)
                    removed.append(f"ip {name}route del local {_DEFAULT[fam]} dev lo table 100")
                except (OSError, NetlinkError):
                    pass
    return removed
