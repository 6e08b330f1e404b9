"""STATUS: can this node service ADD? (the tools the applier execs are present)."""

from __future__ import annotations

import os

_TOOLS = {
    "auto": ("iptables-restore", "iptables-nft-restore", "iptables-legacy-restore", "nft"),
    "iptables-legacy": ("iptables-legacy-restore",),
    "iptables-nft": ("iptables-nft-restore",),
    "nftables": ("nft",),
}
# Runtimes often exec plugins with a minimal PATH; the sbin dirs hold the netfilter tools.
_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _which(name: str) -> str | None:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(_EXTRA_DIRS)
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def readiness_problem(backend: str) -> str | None:
    if _which("nsenter") is None:
        return "nsenter not found"
    tools = _TOOLS.get(backend, _TOOLS["auto"])
    if not any(_which(tool) for tool in tools):
        return "none of " + ", ".join(tools) + " found"
    return None
