"""Preventing the five-tuple collision hang ("503 UF") on kernels before 6.7.

REDIRECT funnels many inbound ports into one capture port; when one client ip:port reaches two of
them, the second connection's reply tuple clashes. Kernels from 6.7 (e27c3295114b) repair this; older
ones hand the second SYN to the first connection's socket through TCP early demux and it hangs for the
whole connect timeout. `net.ipv4.tcp_early_demux` is per network namespace: turning it off in the pod
turns the hang into the silent source-port remap newer kernels do (measured on Debian 12's 6.1).

Choices (`--prevent-tuple-collision`): `auto` (early demux off when the kernel is older than 6.7 and
REDIRECT captures more than one inbound port), `off`, `early-demux` (always), `tproxy` (the readers
switch inbound interception to TPROXY, which has no shared reply tuple).

The value meshnet found is recorded as the alias of the pod's `lo` (an attribute that lives and dies
with the namespace and that any process with CAP_NET_ADMIN in it can read), so cleanup restores
exactly what it changed and never a value somebody else set. Only the stdlib: this runs at pod start.
"""

from __future__ import annotations

import os

from meshnet.errors import MeshnetError

TYPE_CHECKING = False  # keep `typing` off the pod-start path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from meshnet.apply.netns import Netns
    from meshnet.spec.spec import Spec

    _T = TypeVar("_T")

CHOICES = ("auto", "off", "early-demux", "tproxy")
SYSCTL = "net/ipv4/tcp_early_demux"
FIXED_KERNEL = (6, 7)  # e27c3295114b: the early-demux socket is dropped after the implicit SNAT
MARKER = "meshnet:tcp_early_demux="  # lo alias: the value before meshnet turned it off

ALTERNATIVES = ("set the pod sysctl net.ipv4.tcp_early_demux=0 in the pod's securityContext.sysctls "
                "(not in Kubernetes' safe set: kubelet needs --allowed-unsafe-sysctls=net.ipv4.tcp_early_demux), "
                "let meshnet-cni program the pod (it runs on the node and can set it), "
                "or intercept inbound traffic with TPROXY (--prevent-tuple-collision=tproxy)")


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    text = os.uname().release if release is None else release
    major, _, rest = text.partition(".")
    minor = ""
    for ch in rest:
        if not ch.isdecimal():
            break
        minor += ch
    if not major.isdecimal() or not minor:
        return None
    return int(major), int(minor)


def kernel_hangs(release: str | None = None) -> bool:
    """True when the kernel is older than 6.7 (unknown versions are treated as affected)."""
    version = kernel_version(release)
    return version is None or version < FIXED_KERNEL


def funnels_inbound(spec: Spec) -> bool:
    """REDIRECT captures more than one inbound port into the capture port: the collision's precondition."""
    if spec.mode != "REDIRECT" or not spec.inbound_enabled:
        return False
    return spec.inbound_ports_wildcard or len(spec.inbound_ports) > 1


def wants_early_demux_off(spec: Spec, release: str | None = None) -> bool:
    choice = spec.prevent_tuple_collision
    if choice == "early-demux":
        return True
    if choice == "auto":
        return funnels_inbound(spec) and kernel_hangs(release)
    return False


# ------------------------------------------------------------------ the sysctl and its record
def _sysctl_path() -> str:
    return f"/proc/sys/{SYSCTL}"


def read_early_demux(ns: Netns) -> int | None:
    """The pod's tcp_early_demux, None when it cannot be read."""
    try:
        return int(_in_ns(ns, lambda: _read(_sysctl_path())).split()[0])
    except (OSError, ValueError, IndexError, MeshnetError):
        return None


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _in_ns(ns: Netns, fn: Callable[[], _T]) -> _T:
    """/proc/sys/net resolves against the opening thread's namespace: open it in the pod's."""
    return fn() if ns.is_current() else ns.call_in(fn)


def _lo_alias(ns: Netns) -> str:
    out = ns.run(["ip", "-o", "link", "show", "dev", "lo"], check=False).stdout
    # `ip -o link` prints "... \    alias TEXT" when lo has an alias
    _, sep, alias = out.partition(" alias ")
    return alias.strip() if sep else ""


def _set_lo_alias(ns: Netns, text: str) -> None:
    # An empty alias is written as "" by iproute2 and removes it.
    ns.run(["ip", "link", "set", "dev", "lo", "alias", text])


def recorded_value(ns: Netns) -> int | None:
    """The value meshnet recorded before turning early demux off, None when it did not."""
    alias = _lo_alias(ns)
    if not alias.startswith(MARKER):
        return None
    value = alias[len(MARKER):]
    return int(value) if value.isdigit() else None


class Outcome:
    """What enforcing the choice did: `changed`, `message` (one line for the log), `warning`."""

    def __init__(self, changed: bool, message: str, warning: str = "") -> None:
        self.changed = changed
        self.message = message
        self.warning = warning


def enforce(ns: Netns, spec: Spec, release: str | None = None) -> Outcome:
    """Turn early demux off in the pod when the spec asks for it; idempotent."""
    if not wants_early_demux_off(spec, release):
        return Outcome(False, "")
    current = read_early_demux(ns)
    if current == 0:
        return Outcome(False, "tcp_early_demux already 0")
    try:
        _in_ns(ns, lambda: _write(_sysctl_path(), "0\n"))
    except OSError as exc:
        why = "read-only /proc/sys in this container" if exc.errno == 30 else (exc.strerror or str(exc))
        return Outcome(False, "", f"cannot set net.ipv4.tcp_early_demux=0 in the pod ({why}); the five-tuple "
                       f"collision can hang connections on kernel {os.uname().release} (< 6.7). Alternatives: "
                       + ALTERNATIVES)
    if current is not None and not _lo_alias(ns):
        _set_lo_alias(ns, f"{MARKER}{current}")
    return Outcome(True, "set net.ipv4.tcp_early_demux=0 (five-tuple collision prevention)")


def restore(ns: Netns) -> Outcome:
    """Give back the value meshnet recorded; touch nothing meshnet did not change."""
    value = recorded_value(ns)
    if value is None:
        return Outcome(False, "")
    try:
        _in_ns(ns, lambda: _write(_sysctl_path(), f"{value}\n"))
    except OSError as exc:
        return Outcome(False, "", f"cannot restore net.ipv4.tcp_early_demux={value}: {exc.strerror or exc}")
    _set_lo_alias(ns, "")
    return Outcome(True, f"restored net.ipv4.tcp_early_demux={value}")


def enforce_and_report(ns: Netns, spec: Spec, write: Callable[[str], object]) -> Outcome:
    """Entry points: enforce, and write the outcome's line (a warning prefixed as such)."""
    outcome = enforce(ns, spec)
    if outcome.message:
        write(outcome.message + "\n")
    if outcome.warning:
        write("warning: " + outcome.warning + "\n")
    return outcome


def restore_quietly(ns: Netns) -> Outcome:
    """Cleanup paths: restore what meshnet changed; a namespace without `ip` or gone is nothing to do."""
    try:
        return restore(ns)
    except MeshnetError as exc:
        return Outcome(False, "", str(exc))
