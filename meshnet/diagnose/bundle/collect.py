"""`meshnet collect`: a support bundle of one pod namespace (or every one on the node).

Doctor runs live through a Recorder, so the bundle holds every answer doctor's checks got (and
`doctor --bundle` replays them); on top come the files a maintainer asks for, as readable text.
Everything here only reads: legacy tables are dumped only when /proc says they exist, exactly
as meshnet.state.live reads them, so collecting never instantiates a table.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tarfile
import time
from typing import TYPE_CHECKING, Any

from meshnet.diagnose.bundle.source import Recorder
from meshnet.errors import MeshnetError

if TYPE_CHECKING:
    from meshnet.apply.netns import Netns

FORMAT = "meshnet-support-bundle/1"
# (file name, argv): the readable part. Every one is read-only.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ip-rule-v4.txt", ("ip", "-4", "rule", "show")),
    ("ip-rule-v6.txt", ("ip", "-6", "rule", "show")),
    ("ip-route-v4.txt", ("ip", "-4", "route", "show", "table", "all")),
    ("ip-route-v6.txt", ("ip", "-6", "route", "show", "table", "all")),
    ("ip-addr.txt", ("ip", "-d", "addr", "show")),
    ("ip-link.txt", ("ip", "-d", "-s", "link", "show")),
    ("ss-listening.txt", ("ss", "-ltunpe")),
    ("ss-summary.txt", ("ss", "-s")),
    ("conntrack-table.txt", ("conntrack", "-L", "-o", "extended")),
    ("conntrack-stats.txt", ("conntrack", "-S")),
    ("conntrack-count.txt", ("conntrack", "-C")),
    ("nft-ruleset.txt", ("nft", "list", "ruleset")),
)
PROC_NET = ("tcp", "tcp6", "udp", "udp6", "netstat", "snmp", "snmp6", "sockstat", "sockstat6", "if_inet6",
            "ip_tables_names", "ip6_tables_names")
SYSCTLS = (
    "net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter", "net.ipv4.ip_local_port_range", "net.ipv4.ip_nonlocal_bind",
    "net.ipv4.tcp_early_demux", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_timestamps", "net.ipv4.tcp_syn_retries",
    "net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.all.forwarding", "net.ipv6.ip_nonlocal_bind",
    "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_count", "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_tcp_loose", "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
    "net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_timestamp",
)


def _file_name(argv: tuple[str, ...]) -> str:
    return "-".join(a.strip("-") for a in argv if a.strip("-")).replace("/", "_") + ".txt"


def collect_pod(netns: Netns, host: Netns | None, pod: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about one namespace: the replay record, doctor's findings then, readable files."""
    from meshnet.diagnose.conntrack import snapshot_json
    from meshnet.diagnose.conntrack.netlink import NetlinkError
    from meshnet.diagnose.conntrack.snapshot import Snapshot, collect_live
    from meshnet.diagnose.doctor import CannotInspect, diagnose

    rec = Recorder(netns)
    host_rec = Recorder(host) if host is not None and host.inode != netns.inode else None
    conntrack: dict[str, Any] | None = None
    conntrack_error: str | None = None
    snap: Snapshot | None = None
    try:
        snap = collect_live(netns)
        conntrack = snapshot_json.dump(snap)
    except (MeshnetError, OSError, NetlinkError) as exc:
        conntrack_error = str(exc)

    def recorded() -> Snapshot:
        if snap is None:
            raise MeshnetError(conntrack_error or "conntrack not read")
        return snap

    try:
        doctor: dict[str, Any] = diagnose(rec, None, host_rec, conntrack=recorded).to_dict()
    except CannotInspect as exc:
        doctor = {"error": str(exc)}
    files: dict[str, str] = {}
    for name, argv in COMMANDS:
        try:
            cp = rec.run(list(argv), check=False)
            files[name] = cp.stdout + (f"\n# stderr (exit {cp.returncode}):\n{cp.stderr}" if cp.returncode else "")
        except MeshnetError as exc:  # tool missing or timed out: say so in the file
            files[name] = f"# not collected: {exc}\n"
    for name in PROC_NET:
        try:
            rec.read_proc_net(name)
        except (FileNotFoundError, OSError):
            pass
    for key in SYSCTLS:
        try:
            rec.sysctl(key)
        except MeshnetError:
            pass
    for argv, (rc, out, err) in rec.commands.items():  # iptables-save -c of every backend and family, nft -j
        name = _file_name(argv)
        if not any(argv == a for _, a in COMMANDS):
            files.setdefault(name, out + (f"\n# stderr (exit {rc}):\n{err}" if rc else ""))
    files.update({f"proc-net-{k}.txt": v for k, v in rec.proc_net.items() if v is not None})
    files["sysctls.txt"] = "".join(f"{k} = {v if v is not None else '(absent)'}\n" for k, v in rec.sysctls.items())
    return {"label": netns.label, "path": netns.path, "inode": netns.inode, "pod": pod or {},
            "record": rec.record(), "host": host_rec.record() if host_rec else None,
            "host_path": host.path if host_rec and host else None, "host_label": host.label if host else None,
            "conntrack": conntrack, "conntrack_error": conntrack_error, "doctor": doctor, "files": files}


def node_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        meshnet_version = version("meshnet")
    except PackageNotFoundError:
        meshnet_version = "unknown"
    info = {"kernel": platform.release(), "uname": " ".join(os.uname()), "meshnet": meshnet_version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version()}
    from meshnet.apply.netns import Netns

    me = Netns.resolve()
    for tool in (("iptables-nft", "--version"), ("iptables-legacy", "--version"), ("nft", "--version"),
                 ("conntrack", "--version"), ("ip", "-V")):
        try:
            cp = me.run(list(tool), check=False, timeout=10)
            info[tool[0]] = (cp.stdout or cp.stderr).strip()
        except MeshnetError as exc:
            info[tool[0]] = f"not available: {exc}"
    return info


def write_bundle(path: str, pods: list[dict[str, Any]], node: dict[str, Any]) -> None:
    """A gzip'd tar, created 0600 (it holds addresses and process names); written to a temp name first."""
    listed: list[dict[str, Any]] = []
    manifest = {"format": FORMAT, "node": node, "pods": listed}
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for i, pod in enumerate(pods):
                folder = f"pods/{i:03d}-{_safe(os.path.basename(pod['label'].rstrip('/')) or pod['label'])}"
                files = pod.pop("files")
                _add(tar, f"{folder}/record.json", json.dumps(pod, indent=1))
                for name, text in sorted(files.items()):
                    _add(tar, f"{folder}/{name}", text)
                listed.append({"label": pod["label"], "path": pod["path"], "pod": pod["pod"],
                               "dir": folder, "files": sorted(files)})
            _add(tar, "manifest.json", json.dumps(manifest, indent=1))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))
