"""A real containerd CRI node for tests: tests/harness/crinode with the meshnet image imported.

One `CriNode` per test session: its own CRINODE_BASE (`/tmp/mn-crinode-<hex>`) and node namespace
(`mn-<hex>-node`), a conflist bridge (isGateway false, ipMasq false, a random private /24) followed by
meshnet-cni, chained in by `meshnet cni install --conflist` with the plugin file taken out of the
image (what the DaemonSet's installer copies to a node). `close()` always runs `crinode down`.
The CRI client's generated stubs and the pause image are built once per checkout (tests/harness/crinode_tool.py).
Pods live under a cgroup parent of this node's own (CRINODE_CGROUP_PARENT), the only one its `crinode down` kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import crinode_lock
from harness.crinode_tool import CRI_PY, CrinodeCalls, node_env, seed_base
from harness.tarfiles import member
from harness.topology import NS_PREFIX

REPO = Path(__file__).resolve().parents[2]
IMAGE_TAR = REPO / "build" / "images" / "meshnet.tar"
IMAGE_REF = "localhost/meshnet:dev"
SIDECAR = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
# Istio's injector: istio-init's exact args and securityContext (uid 0, drop ALL, add NET_ADMIN+NET_RAW).
ISTIO_INIT_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                   "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]
INIT_CAPS = ("NET_ADMIN", "NET_RAW")


def build_image() -> Path:
    """`make images`' script; a no-op-ish rebuild of layer 2 when the base is cached (~10 s)."""
    cp = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "build_image.py")],
                        capture_output=True, text=True, timeout=1800)
    if cp.returncode != 0 or not IMAGE_TAR.exists():
        raise RuntimeError(f"image build failed ({cp.returncode}): {cp.stderr.strip()[-2000:]}")
    return IMAGE_TAR


def image_file(path: str, dest: Path, tar_path: Path = IMAGE_TAR) -> Path:
    """Copy one file out of the docker-archive (top layer first), as the installer container would."""
    with tarfile.open(tar_path) as outer:
        manifest = json.load(member(outer, "manifest.json"))
        for layer_name in reversed(manifest[0]["Layers"]):
            with tarfile.open(fileobj=member(outer, layer_name)) as layer:
                try:
                    info = layer.getmember("./" + path.lstrip("/"))
                except KeyError:
                    continue
                if info.issym():
                    return image_file(info.linkname, dest, tar_path)
                data = member(layer, info).read()
                dest.write_bytes(data)
                dest.chmod(0o755)
                return dest
    raise FileNotFoundError(f"{path} is not in {tar_path}")


@dataclass
class CriResult:
    returncode: int
    data: Any
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class CriNode(CrinodeCalls):
    """containerd + CRI in its own base and namespace, with bridge + meshnet-cni. Use as a context manager."""

    chain_meshnet: bool = True  # False: the bridge alone (bench/cri.py's floor)
    import_image: bool = True
    agent_socket: str = "off"  # the exec'd plugin works alone unless pointed at an agent
    token: str = field(default_factory=lambda: secrets.token_hex(4))

    def __post_init__(self) -> None:
        self.base = Path(f"/tmp/mn-crinode-{self.token}")
        self.netns = f"{NS_PREFIX}{self.token}-node"
        self.cgroup_parent = f"/crinode-pods-{self.token}"  # `crinode down` kills only this node's pods
        self.subnet = f"10.{random.randint(1, 254)}.{random.randint(0, 255)}.0/24"
        self.conflist = self.base / "cni" / "net.d" / "10-meshnet-test.conflist"
        self.log_file = self.base / "log" / "meshnet-cni.log"
        # containerd's environment reaches the plugins it execs
        self.env = {**node_env(self.base, self.netns, self.cgroup_parent),
                    "MESHNET_CNI_AGENT_SOCKET": self.agent_socket}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> CriNode:
        crinode_lock.acquire()  # released by close(), after `crinode down`
        try:
            self.setup()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        seed_base(self.base)
        self._check(self.crinode("setup"), "setup")
        plugin = self.base / "meshnet-cni.from-image"
        if IMAGE_TAR.exists():
            image_file("/opt/meshnet/meshnet-cni", plugin)
        else:  # bench/cri.py without `make images`: the same zipapp, built here
            from meshnet.cni.bundle import build

            build(plugin)
        if self.chain_meshnet:
            self.write_conflist(plugin)
        else:
            self.write_conflist(bridge_only=True)

    def write_conflist(self, plugin: Path | None = None, **overrides: Any) -> None:
        """bridge alone, then meshnet-cni chained by its installer (the DaemonSet's `install` step)."""
        conf = {"cniVersion": "1.0.0", "name": f"mn-{self.token}",
                "plugins": [{"type": "bridge", "bridge": f"mn-br{self.token}", "isGateway": False, "ipMasq": False,
                             "ipam": {"type": "host-local", "subnet": self.subnet,
                                      "dataDir": str(self.base / "cni" / "ipam")}}]}
        self.conflist.write_text(json.dumps(conf, indent=2))
        if overrides.pop("bridge_only", False):
            return
        plugin = plugin or self.base / "meshnet-cni.from-image"
        cp = subprocess.run([str(REPO / ".venv" / "bin" / "meshnet"), "cni", "install", "--conflist",
                             str(self.conflist), "--bin-dir", str(self.base / "cni" / "bin"), "--plugin-file",
                             str(plugin), "--log-file", str(self.log_file), "--log-level", "debug"],
                            capture_output=True, text=True, timeout=60)
        self._check(cp, "meshnet cni install")
        if overrides:
            conf = json.loads(self.conflist.read_text())
            conf["plugins"][-1].update(overrides)
            self.conflist.write_text(json.dumps(conf, indent=2))

    def plugins(self) -> list[str]:
        return [p["type"] for p in json.loads(self.conflist.read_text())["plugins"]]

    def start(self) -> None:
        self._check(self.crinode("start"), "start")
        if self.import_image and not any(IMAGE_REF in t for im in self.images() for t in im["tags"]):
            self._check(self.crinode("import", str(IMAGE_TAR), timeout=600), "import")

    def restart(self) -> None:
        """containerd reads the conflist at start: stop it (pods keep running, as on a node) and start again."""
        self._check(self.crinode("stop"), "stop")
        self._check(self.crinode("start"), "start")

    def close(self) -> None:
        if self.base.exists():
            down = self.crinode("down", timeout=300)
            # `down` keeps the client and images for a reuse we will not make: remove the whole base,
            # unless something is still mounted under it (then say so rather than delete through it).
            mounted = self.mounts_left()
            if mounted:
                raise RuntimeError(f"crinode down left mounts {mounted}: {down.stderr.strip()[-500:]}")
            shutil.rmtree(self.base, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        try:
            self._remove_cgroups()
        finally:
            crinode_lock.release()

    def _remove_cgroups(self) -> None:
        """Our pods' cgroups (only ours: named by this node's token), emptied and removed."""
        for root in Path("/sys/fs/cgroup").glob(f"*{self.cgroup_parent}"):
            for procs in root.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(25):
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()
                if not root.exists():
                    break
                time.sleep(0.2)

    # ------------------------------------------------------------------ CRI calls
    def cri_argv(self, *args: str) -> list[str]:
        """`crinode cri ARGS`, without the shell script in between (run with self.env)."""
        return [sys.executable, str(CRI_PY), *args]

    def cri(self, *args: str, timeout: float = 300) -> CriResult:
        cp = subprocess.run(self.cri_argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env,
                            stdin=subprocess.DEVNULL)
        try:
            data = json.loads(cp.stdout) if cp.stdout.strip() else None
        except json.JSONDecodeError:
            data = cp.stdout
        return CriResult(cp.returncode, data, cp.stderr)

    def images(self) -> list[dict[str, Any]]:
        r = self.cri("images")
        return r.data if r.ok else []

    def run_pod(self, name: str, namespace: str = "default", annotations: Mapping[str, str] | None = None,
                check: bool = True) -> CriResult:
        args = ["run", "--name", name, "--namespace", namespace]
        for k, v in (annotations or {}).items():
            args += ["-a", f"{k}={v}"]
        r = self.cri(*args)
        if check and not r.ok:
            raise AssertionError(f"RunPodSandbox {name}: {r.data} {r.stderr}")
        return r

    def run_pod_argv(self, name: str, namespace: str = "default",
                     annotations: Mapping[str, str] | None = None) -> list[str]:
        """The `crinode cri run` command line, for tests that start many at once."""
        argv = self.cri_argv("run", "--name", name, "--namespace", namespace)
        for k, v in (annotations or {}).items():
            argv += ["-a", f"{k}={v}"]
        return argv

    def container(self, pod: str, argv: Sequence[str], *, user: int | None = None, group: int | None = None,
                  caps: Sequence[str] = (), drop_all: bool = True, detach: bool = False,
                  image: str = IMAGE_REF, timeout: float = 120) -> CriResult:
        """CreateContainer + StartContainer as kubelet does for a pod's container; waits for exit."""
        args = ["container", "--pod", pod, "--image", image, "--timeout", str(timeout)]
        if user is not None:
            args += ["--user", str(user)]
        if group is not None:
            args += ["--group", str(group)]
        for cap in caps:
            args += ["--cap-add", cap]
        if drop_all:
            args.append("--drop-all")
        if detach:
            args.append("--detach")
        return self.cri(*args, "--", *argv, timeout=timeout + 60)

    def istio_init(self, pod: str, args: Sequence[str] = ISTIO_INIT_ARGS) -> CriResult:
        """istio-init as the injector runs it: uid 0, drop ALL + NET_ADMIN/NET_RAW, no privilege escalation."""
        return self.container(pod, ["meshnet", *args], user=0, group=0, caps=INIT_CAPS)

    def stop_pod(self, pod: str) -> CriResult:
        return self.cri("stop", pod)

    def rm_pod(self, pod: str) -> CriResult:
        return self.cri("rm", pod)

    def pods(self) -> list[dict[str, Any]]:
        return self.cri("ls").data or []

    def cni_log(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------ inspection from the node
def in_netns(netns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a host tool inside a pod sandbox's namespace (the path containerd gives, not `ip netns`)."""
    return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], capture_output=True, text=True, timeout=60,
                          **kw)


def save(netns: str, tool: str = "iptables-nft-save") -> str:
    cp = in_netns(netns, [tool])
    if cp.returncode != 0:
        raise RuntimeError(f"{tool} in {netns}: {cp.stderr.strip()}")
    return cp.stdout


def istio_lines(netns: str) -> list[str]:
    """Every Istio trace in the namespace: iptables (nft and legacy), nft tables, fwmark rules."""
    found: list[str] = []
    for tool in ("iptables-nft-save", "ip6tables-nft-save"):
        found += [f"{tool}: {ln}" for ln in save(netns, tool).splitlines() if "ISTIO" in ln]
    # Legacy tables are looked up in /proc first: iptables-legacy-save would create them.
    for names, tool in (("ip_tables_names", "iptables-legacy-save"), ("ip6_tables_names", "ip6tables-legacy-save")):
        if in_netns(netns, ["cat", f"/proc/net/{names}"]).stdout.split():
            found += [f"{tool}: {ln}" for ln in save(netns, tool).splitlines() if "ISTIO" in ln]
    found += [f"nft: {ln}" for ln in in_netns(netns, ["nft", "list", "tables"]).stdout.splitlines() if "istio" in ln]
    for fam in ("-4", "-6"):
        found += [f"ip {fam} rule: {ln}" for ln in in_netns(netns, ["ip", fam, "rule"]).stdout.splitlines()
                  if "fwmark" in ln]
    return found
