"""iptables-save / iptables-restore in a namespace, legacy or nft variant, one call per family.

Lock choice: iptables-nft takes no lock (nft transactions are atomic in the kernel). Legacy
serialises writers with an flock on /run/xtables.lock, which lives in the *mount* namespace and
is therefore shared by every network namespace on the host (Istio #47002: pods stalled for hours
behind kube-proxy). For another namespace we lock that namespace's own nsfs file instead
(XTABLES_LOCKFILE, exactly as Istio's CNI sandbox does), so 32 concurrent applies into 32
namespaces never wait on each other or on the host; in the current namespace (istio-init in its
own container) the default lock is used, like Istio, unless it cannot be opened (a read-only root
filesystem, no /run): then the namespace's own nsfs file (/proc/self/ns/net of the tool), which
needs no capability to open and flock. An XTABLES_LOCKFILE set by the operator is kept for the
current namespace. The wait is always bounded (`-w`).

Under meshnet's own writer lock (backends/nslock.py, itself an flock on that nsfs inode) a restore
must not lock the nsfs file again (through another open it would wait on its own parent): it gets
a private per-namespace file, /run/meshnet/locks/<dev>-<ino>.xtables, or where /run is not
writable its own mount namespace's nsfs file (/proc/self/ns/mnt: nobody else locks that).
"""

from __future__ import annotations

import os

from meshnet.apply.backends import LEGACY, NFT
from meshnet.apply.netns import Netns, NetnsError, which
from meshnet.errors import ApplyError
from meshnet.lite.records import dataclass
from meshnet.plan.model import Family

LOCK_WAIT_SECONDS = 10
DEFAULT_LOCK = "/run/xtables.lock"
OWN_NETNS_LOCK = "/proc/self/ns/net"  # resolved by the iptables process itself: its (our) namespace
OWN_MNT_LOCK = "/proc/self/ns/mnt"
TIMEOUT_SECONDS = 60.0
# xtables exit codes, as Istio words them.
_EXIT_MEANING = {1: "other problem", 2: "parameter problem", 3: "version problem", 4: "resource problem"}


@dataclass(frozen=True)
class Xtables:
    """One iptables variant: `legacy` or `nft`."""

    variant: str

    @property
    def backend(self) -> str:
        return LEGACY if self.variant == "legacy" else NFT

    def binary(self, family: Family, tool: str) -> str:
        """e.g. ('6', 'restore') -> ip6tables-nft-restore."""
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-{self.variant}-{tool}" if tool else f"{base}-{self.variant}"

    def available(self) -> bool:
        return which(self.binary(4, "restore")) is not None

    def lock_env(self, netns: Netns) -> dict[str, str] | None:
        if self.variant != "legacy":
            return None
        from meshnet.apply.backends import nslock

        held = nslock.identity(netns) in set(nslock.held_by_this_thread())
        if not netns.is_current():
            return {**os.environ, "XTABLES_LOCKFILE": _private_lock(netns) if held else netns.path}
        if "XTABLES_LOCKFILE" in os.environ or _default_lock_usable():
            return None
        return {**os.environ, "XTABLES_LOCKFILE": _private_lock(netns) if held else OWN_NETNS_LOCK}

    def restore_families(self, netns: Netns, payloads: dict[Family, str]) -> None:
        """v4 then v6 (--noflush), detached, as one spawn: the payloads are in the child before it
        starts, so a kill of meshnet (or of its process group) never leaves one family written
        and the other not. One family: that restore alone."""
        fams = list(payloads)
        if len(fams) == 1:
            self.restore(netns, fams[0], payloads[fams[0]], detached=True)
            return
        argvs = [self.restore_argv(fam) for fam in fams]
        argv = ["sh", "-c", families_script(argvs), "sh", *(payloads[f] for f in fams)]
        if which("setsid"):
            argv = ["setsid", *argv]
        try:
            cp = netns.run(argv, timeout=TIMEOUT_SECONDS, check=False, env=self.lock_env(netns))
        except NetnsError as exc:
            raise ApplyError(str(exc)) from None
        if cp.returncode != 0:
            step, code, stderr = script_failure(cp.returncode, cp.stderr)
            raise ApplyError(_describe(netns, argvs[min(step, len(argvs) - 1)], code, stderr))

    def save(self, netns: Netns, family: Family) -> str:
        """Full save output with counters. Creates nothing: without -t only existing tables are read."""
        if self.variant == "legacy" and not legacy_tables(netns, family):
            return ""  # fast path, and certain not to instantiate anything
        argv = [self.binary(family, "save"), "-c"]
        try:
            cp = netns.run(argv, timeout=TIMEOUT_SECONDS, check=False)
        except NetnsError as exc:
            raise ApplyError(str(exc)) from None
        if cp.returncode != 0:
            raise ApplyError(_describe(netns, argv, cp.returncode, cp.stderr))
        return cp.stdout

    def restore_argv(self, family: Family, *, noflush: bool = True) -> list[str]:
        argv = [self.binary(family, "restore"), f"--wait={LOCK_WAIT_SECONDS}"]
        return [*argv, "--noflush"] if noflush else argv

    def restore(self, netns: Netns, family: Family, text: str, *, noflush: bool = True,
                counters: bool = False, detached: bool = False) -> None:
        """One atomic-per-table restore; raises ApplyError with the tool's own message.

        `detached`: in its own session (setsid), so a kill of meshnet's process group cannot stop
        it between two table commits (its payload is in the pipe before it starts).
        """
        argv = self.restore_argv(family, noflush=noflush)
        if counters:
            argv.append("--counters")
        run = ["setsid", *argv] if detached and which("setsid") else argv
        try:
            cp = netns.run(run, input=text, timeout=TIMEOUT_SECONDS, check=False, env=self.lock_env(netns))
        except NetnsError as exc:
            raise ApplyError(str(exc)) from None
        if cp.returncode != 0:
            raise ApplyError(_describe(netns, argv, cp.returncode, cp.stderr))


_LOCK_USABLE: list[bool] = []


def _default_lock_usable() -> bool:
    """Can iptables open /run/xtables.lock here? It opens it O_CREAT, so try exactly that (once)."""
    if not _LOCK_USABLE:
        try:
            os.close(os.open(DEFAULT_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            _LOCK_USABLE.append(True)
        except OSError:
            _LOCK_USABLE.append(False)
    return _LOCK_USABLE[0]


FAILED_MARK = "meshnet: failed step "


def families_script(argvs: list[list[str]]) -> str:
    """sh: feed $1 to the first command, then $2 to the second; on failure name the step on stderr
    (FAILED_MARK + index) and exit with its status."""
    return "; ".join(f'printf "%s" "${i + 1}" | {" ".join(argv)} || {{ c=$?; echo "{FAILED_MARK}{i}" >&2; exit $c; }}'
                     for i, argv in enumerate(argvs))


def script_failure(returncode: int, stderr: str) -> tuple[int, int, str]:
    """(failed step, its exit code (negative: killed by that signal), its stderr) of families_script."""
    step = 0
    kept = []
    for line in stderr.splitlines():
        if line.startswith(FAILED_MARK):
            step = int(line[len(FAILED_MARK):].strip() or 0)
        else:
            kept.append(line)
    code = -(returncode - 128) if 128 < returncode < 160 else returncode
    return step, code, "\n".join(kept)


def _private_lock(netns: Netns) -> str:
    from meshnet.apply.backends import nslock

    dev, ino = nslock.identity(netns)
    try:
        os.makedirs(nslock.FALLBACK_DIR, mode=0o700, exist_ok=True)
    except OSError:
        return OWN_MNT_LOCK
    return f"{nslock.FALLBACK_DIR}/{dev}-{ino}.xtables"


def strip_counters(save_text: str) -> str:
    """Drop the `[packets:bytes] ` prefix `-c` puts before each rule (parsers want plain rules)."""
    return "\n".join(line.split("] ", 1)[1] if line.startswith("[") else line for line in save_text.splitlines())


def legacy_tables(netns: Netns, family: Family) -> list[str]:
    """Legacy tables instantiated in the namespace, read from /proc: never creates one."""
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    try:
        text = netns.read_proc_net(name)
    except FileNotFoundError:
        return []  # module not loaded: no legacy table anywhere
    return text.split()


def _describe(netns: Netns, argv: list[str], code: int, stderr: str) -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip() and not ln.startswith("Try `")]
    detail = "; ".join(lines[-2:]) if lines else "(no stderr)"
    if code < 0:
        meaning = f"killed by signal {-code}"
    else:
        meaning = f"xtables {_EXIT_MEANING.get(code, 'error')} (exit {code})"
    if code > 0:
        from meshnet.apply import caps

        if caps.denied(stderr or ""):
            needs = [caps.NET_ADMIN, caps.NET_RAW] if "-legacy-" in argv[0] else [caps.NET_ADMIN]
            why = caps.explain(argv[0].rsplit("/", 1)[-1], needs)
            if why:
                return f"[{netns.label}] {why}"
    return f"[{netns.label}] {argv[0]}: {meaning}: {detail}"
