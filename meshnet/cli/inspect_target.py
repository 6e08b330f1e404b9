"""The namespace a diagnostic command reads, and the capabilities reading it needs.

`doctor`, `status`, `explain`, `diff` and `conntrack analyze|watch` read `--netns NAME|PATH` or
`--pid PID`, or, given neither, the namespace they run in: that is `kubectl debug -it POD
--target=CONTAINER --profile=netadmin -- meshnet doctor`, a container in the pod with NET_ADMIN
+ NET_RAW only. Writing commands (`apply`, `cleanup`) keep refusing the current namespace.

Checked up front, so a missing capability is one line and exit 2 instead of a pile of tool errors:
CAP_NET_ADMIN always (iptables-nft, nft and conntrack read over nfnetlink, which requires it even
for a dump), CAP_NET_RAW too when the namespace has legacy tables (iptables-legacy-save opens a raw
socket), CAP_SYS_ADMIN for a namespace other than the current one (setns / nsenter).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

DEBUG_HINT = "kubectl debug --profile=netadmin gives NET_ADMIN and NET_RAW"


def inspect_target(netns: str | None = None, pid: int | None = None) -> Netns:
    """Resolve --netns/--pid (neither: the current namespace) and check what reading it needs."""
    from meshnet.apply.netns import Netns

    target = Netns.resolve(netns=netns, pid=pid)
    require_inspect(target)
    return target


def require_inspect(target: Netns) -> None:
    from meshnet.apply import caps
    from meshnet.errors import CapabilityError

    if target.is_current():
        where = "reading the rules and conntrack of the current network namespace"
    else:
        where = f"reading network namespace {target.label!r} from outside"
        caps.require(f"{where} (entering it)", [caps.SYS_ADMIN])
    needs = [caps.NET_ADMIN]
    if _has_legacy_tables(target):
        needs.append(caps.NET_RAW)
        where += " (it has iptables-legacy tables)"
    lacking = caps.missing(needs)
    if lacking:
        hint = f" ({DEBUG_HINT})" if target.is_current() else ""
        raise CapabilityError(caps.message(where, needs, lacking) + hint)


def _has_legacy_tables(target: Netns) -> bool:
    from meshnet.apply.backends.xtables import legacy_tables

    return bool(legacy_tables(target, 4) or legacy_tables(target, 6))
