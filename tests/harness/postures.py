"""The security contexts Kubernetes runs meshnet with, reproduced with setpriv inside `ip netns exec`.

* INJECTOR: istio-init as the sidecar injector writes it (uid 0, `capabilities: {drop: [ALL], add:
  [NET_ADMIN, NET_RAW]}`, `allowPrivilegeEscalation: false`);
* VALIDATION: istio-validation (uid/gid 1337, no capabilities at all, no_new_privs);
* NETADMIN: a `kubectl debug --profile=netadmin` container (NET_ADMIN + NET_RAW, as root);
* NO_CAPS: root with nothing, to check the one-line "lacks CAP_..." errors.

A process run this way is *in* the pod namespace and cannot setns (no CAP_SYS_ADMIN). uid 1337
cannot read the venv or the checkout (suites run from a 0700 directory), so `proxy_meshnet()` runs
a world-readable copy of the package with the system python, as an image would install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from meshnet.apply.netns import Netns

REPO = Path(__file__).resolve().parents[2]
ISTIO_INIT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
              "-d", "15090,15021,15020"]
TPROXY = [*ISTIO_INIT[:6], "-m", "TPROXY", *ISTIO_INIT[8:]]
INJECTOR = ["setpriv", "--bounding-set", "-all,+net_admin,+net_raw", "--inh-caps", "-all,+net_admin,+net_raw",
            "--no-new-privs", "--"]
INJECTOR_CAPEFF = "0000000000003000"  # bits 12 (NET_ADMIN) and 13 (NET_RAW)
NETADMIN = INJECTOR
NET_ADMIN_ONLY = ["setpriv", "--bounding-set", "-all,+net_admin", "--inh-caps", "-all,+net_admin", "--no-new-privs",
                  "--"]
NO_CAPS = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--"]
PROXY_UID = 1337
VALIDATION = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups", "--inh-caps", "-all",
              "--bounding-set", "-all", "--no-new-privs", "--"]
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]
SYSTEM_PYTHON = "/usr/bin/python3"


def in_pod(ns: Netns, argv: Sequence[str], posture: Sequence[str] = INJECTOR, env: dict[str, str] | None = None,
           wrap: Sequence[str] = (), input: str = "") -> subprocess.CompletedProcess[str]:
    """Run argv inside the pod the way a container runtime would: in its namespace, caps dropped."""
    return subprocess.run(["ip", "netns", "exec", ns.label, *wrap, *posture, *argv], capture_output=True, text=True,
                          timeout=120, input=input, cwd="/", env={**os.environ, **(env or {})})


def istio_iptables(ns: Netns, *flags: str, posture: Sequence[str] = INJECTOR,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return in_pod(ns, [*MESHNET, "istio-iptables", *flags], posture, env)


def ok(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, (cp.returncode, cp.stdout, cp.stderr)
    return cp.stdout


def one_line_error(cp: subprocess.CompletedProcess[str], code: int) -> str:
    assert cp.returncode == code, (cp.returncode, cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cp.stderr, cp.stderr
    return lines[0]


def _drop_empty_tables(save: str) -> str:
    """iptables-save without comments, counters or tables that hold nothing (a legacy table the
    kernel instantiated on first read stays, empty, for the namespace's life)."""
    out: list[str] = []
    block: list[str] = []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        line = line.split(" [", 1)[0] if line.startswith(":") else line
        block.append(line)
        if line == "COMMIT":
            if any(b.startswith("-A") or (b.startswith(":") and " - " in b + " ") for b in block[1:]):
                out.extend(block)
            block = []
    return "\n".join(out)


def dump(ns: Netns) -> dict[str, str]:
    """Everything istio-iptables may touch, read by full root from outside."""
    def run(*argv: str) -> str:
        return ns.run(list(argv)).stdout

    out = {f"{tool}": _drop_empty_tables(run(tool)) for tool in
           ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save")}
    out["nft"] = run("nft", "-s", "list", "ruleset")  # -s: without counters, which traffic moves
    out["ip rule"] = run("ip", "-4", "rule") + run("ip", "-6", "rule")
    # A table that was never used makes `ip route show table` fail ("Dump terminated"): that is "empty".
    out["table 133"] = "".join(ns.run(["ip", f, "route", "show", "table", "133"], check=False).stdout
                               for f in ("-4", "-6"))
    out["lo"] = " ".join(sorted(line.split()[3] for line in run("ip", "-o", "addr", "show", "dev", "lo").splitlines()))
    return out


class ProxyMeshnet:
    """A copy of the meshnet package any uid can read, run with the system python (stdlib only)."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="mn-pkg-")
        os.chmod(self.root, 0o755)
        shutil.copytree(REPO / "meshnet", Path(self.root) / "meshnet",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for dirpath, dirnames, filenames in os.walk(self.root):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable
        # -I: no site, no env, no cwd; -B: nothing written (the copy is read-only to the proxy uid).
        self.argv = [python, "-I", "-B", "-c",
                     f"import sys; sys.path.insert(0, {self.root!r}); from meshnet.cli.main import main; main()"]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
