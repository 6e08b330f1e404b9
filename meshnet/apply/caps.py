"""Which Linux capabilities this process has, and one-line messages naming the ones it lacks.

Kubernetes runs meshnet with very few: istio-init as uid 0 with NET_ADMIN + NET_RAW and
no_new_privs, istio-validation as uid 1337 with none, a `kubectl debug --profile=netadmin`
container with NET_ADMIN + NET_RAW. What needs what, measured on this kernel:

* iptables-nft, nft, conntrack netlink, ip rule/route/addr changes: CAP_NET_ADMIN;
* iptables-legacy (a raw socket + IPT_SO_* sockopts), even to read: CAP_NET_ADMIN + CAP_NET_RAW;
* entering another network namespace (setns, nsenter, pyroute2 netns=): CAP_SYS_ADMIN;
* running the validation client as the proxy uid from another uid: CAP_SETUID + CAP_SETGID.

Reading /proc/self/status costs microseconds and imports nothing, but the pod-start path only
calls this after something failed, to say why.
"""

from __future__ import annotations

from meshnet.errors import CapabilityError

__all__ = ["CapabilityError", "effective", "explain", "message", "missing", "require"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

NET_ADMIN, NET_RAW, SYS_ADMIN = "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"
SETUID, SETGID, SYS_PTRACE = "CAP_SETUID", "CAP_SETGID", "CAP_SYS_PTRACE"
BITS = {SETGID: 6, SETUID: 7, NET_ADMIN: 12, NET_RAW: 13, SYS_PTRACE: 19, SYS_ADMIN: 21}
STATUS_PATH = "/proc/self/status"


def effective(status_path: str = STATUS_PATH) -> int:
    """The CapEff bit mask (0 when it cannot be read)."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def missing(names: Iterable[str], mask: int | None = None) -> list[str]:
    """Those of `names` not in the effective set, in the order given."""
    eff = effective() if mask is None else mask
    return [n for n in names if not eff >> BITS[n] & 1]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def message(doing: str, needs: list[str], lacking: list[str]) -> str:
    """'<doing> needs CAP_X and CAP_Y; this process lacks CAP_Y' (one line)."""
    return f"{doing} needs {_join(needs)}; this process lacks {_join(lacking)}"


def require(doing: str, needs: list[str], mask: int | None = None) -> None:
    """Raise CapabilityError naming what is missing, or return."""
    lacking = missing(needs, mask)
    if lacking:
        raise CapabilityError(message(doing, needs, lacking))


def explain(doing: str, needs: list[str]) -> str | None:
    """After an EPERM: the message naming what is missing, or None if nothing is (so it was not that)."""
    lacking = missing(needs)
    return message(doing, needs, lacking) if lacking else None


def denied(text: str) -> bool:
    """Whether a tool's stderr says the kernel refused for lack of privilege."""
    low = text.lower()
    return "permission denied" in low or "operation not permitted" in low or "must be root" in low
