"""The seam between doctor's checks and the namespace they read: live, recording, or replayed.

Checks read a namespace only through a handful of read-only calls: `run(argv)` for tools
(iptables-save, nft, ip -j ...), `read_proc_net(name)`, `sysctl(key)` and `has_tool(name)`.
A :class:`Recorder` wraps a live :class:`~meshnet.apply.netns.Netns` and keeps every answer; a
:class:`Replay` answers the same calls from a bundle. Running doctor through a Recorder while
collecting is what makes `doctor --bundle` see exactly what the live doctor saw.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from meshnet.apply.netns import NetnsError, which
from meshnet.lite.spawn import Completed

if TYPE_CHECKING:
    from collections.abc import Sequence

    from meshnet.apply.netns import Netns


def has_tool(netns: Any, name: str) -> bool:
    """Whether `name` is installed, as the source knows it (a bundle answers for the node it came from)."""
    ask = getattr(netns, "has_tool", None)
    return ask(name) if ask is not None else which(name) is not None


class Recorder:
    """A live namespace that remembers every read-only answer it gives."""

    def __init__(self, netns: Netns) -> None:
        self.netns = netns
        self.commands: dict[tuple[str, ...], tuple[int, str, str]] = {}
        self.proc_net: dict[str, str | None] = {}
        self.sysctls: dict[str, str | None] = {}
        self.tools: dict[str, bool] = {}

    def __getattr__(self, name: str) -> Any:  # path, label, is_current, socket, call_in, ...
        return getattr(self.netns, name)

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True,
            env: Any = None) -> Completed:
        cp = self.netns.run(argv, input=input, timeout=timeout, check=False, env=env)
        if input is None:  # only reads are worth replaying; writes never happen through doctor
            self.commands[tuple(argv)] = (cp.returncode, cp.stdout, cp.stderr)
        return _checked(self.netns.label, argv, cp, check)

    def read_proc_net(self, name: str) -> str:
        try:
            text = self.netns.read_proc_net(name)
        except FileNotFoundError:
            self.proc_net[name] = None
            raise
        self.proc_net[name] = text
        return text

    def sysctl(self, key: str) -> str:
        try:
            value = self.netns.sysctl(key)
        except NetnsError:
            self.sysctls[key] = None
            raise
        self.sysctls[key] = value
        return value

    def has_tool(self, name: str) -> bool:
        self.tools[name] = which(name) is not None
        return self.tools[name]

    def record(self) -> dict[str, Any]:
        """Everything seen, as JSON-ready data (argv lists, not tuples)."""
        return {"commands": [{"argv": list(a), "returncode": rc, "stdout": out, "stderr": err}
                             for a, (rc, out, err) in self.commands.items()],
                "proc_net": self.proc_net, "sysctls": self.sysctls, "tools": self.tools}


class Replay:
    """A namespace as a bundle recorded it: answers the reads a Recorder saw, nothing else."""

    def __init__(self, label: str, path: str, data: dict[str, Any]) -> None:
        self.label = label
        self.path = path
        self.commands = {tuple(c["argv"]): (int(c["returncode"]), str(c["stdout"]), str(c["stderr"]))
                         for c in data.get("commands", [])}
        self.proc_net: dict[str, str | None] = dict(data.get("proc_net", {}))
        self.sysctls: dict[str, str | None] = dict(data.get("sysctls", {}))
        self.tools: dict[str, bool] = dict(data.get("tools", {}))

    def __str__(self) -> str:
        return self.label

    def is_current(self) -> bool:
        return False

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True,
            env: Any = None) -> Completed:
        got = self.commands.get(tuple(argv))
        if got is None or input is not None:
            raise NetnsError(f"[{self.label}] {' '.join(argv)}: not recorded in the bundle")
        return _checked(self.label, argv, Completed(list(argv), *got), check)

    def read_proc_net(self, name: str) -> str:
        if name not in self.proc_net:
            raise NetnsError(f"[{self.label}] /proc/net/{name}: not recorded in the bundle")
        text = self.proc_net[name]
        if text is None:
            raise FileNotFoundError(f"/proc/net/{name} did not exist in {self.label}")
        return text

    def sysctl(self, key: str) -> str:
        value = self.sysctls.get(key)
        if value is None:
            raise NetnsError(f"[{self.label}] sysctl {key}: not recorded in the bundle (or absent on the node)")
        return value

    def has_tool(self, name: str) -> bool:
        return bool(self.tools.get(name, False))

    def __getattr__(self, name: str) -> Any:
        # socket(), call_in(), ipr(), popen(): a bundle cannot do live work.
        if name.startswith("__"):
            raise AttributeError(name)

        def offline(*_: object, **__: object) -> Any:
            raise NetnsError(f"[{self.label}] {name}: not available offline (support bundle)")

        return offline


def _checked(label: str, argv: Sequence[str], cp: Completed, check: bool) -> Completed:
    if check and cp.returncode != 0:
        lines = [ln for ln in (cp.stderr or "").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "(no stderr)"
        raise NetnsError(f"[{label}] {shlex.join(argv)}: exit status {cp.returncode}: {last}")
    return cp
