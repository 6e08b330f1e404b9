"""A real CNI setup for tests: cnirun (libcni, tests/harness/cnirun) + Debian's bridge/host-local + meshnet-cni.

Everything runs inside throwaway namespaces: a `node` namespace (`mn-<hex>-node`) stands in for
the host, so the bridge (`mn-br<hex>`), the host ends of the veths and anything the reference
plugins do live there and vanish with it; pods are `mn-<hex>-<name>` namespaces. The bridge has
`isGateway: false`, so pods get no default route. host-local's dataDir and the CNI cache dir are
in a temp dir removed on close().
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.topology import CREATED_NAMESPACES, NS_PREFIX

from meshnet.apply.netns import Netns

REPO = Path(__file__).resolve().parents[2]
CNIRUN_SRC = Path(__file__).resolve().parent / "cnirun" / "main.go"  # ours, in the repo
CNIRUN_DIR = Path(os.environ.get("MESHNET_CNIRUN_DIR", REPO / "build" / "cnirun"))
GOPATH = "/usr/share/gocode"  # Debian's golang-github-appc-cni-dev (scripts/setup.sh installs it): no module proxy
REF_PLUGINS = "/usr/lib/cni"
SIDECAR = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}


def build_cnirun() -> Path:
    """Build tests/harness/cnirun once per checkout (again when main.go changes), under a lock."""
    binary = CNIRUN_DIR / "cnirun"
    stamp = CNIRUN_DIR / "main.go.sha256"
    want = hashlib.sha256(CNIRUN_SRC.read_bytes()).hexdigest()
    CNIRUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(CNIRUN_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions of one checkout build it once
        if binary.exists() and stamp.exists() and stamp.read_text() == want:
            return binary
        if not shutil.which("go") or not Path(GOPATH, "src/github.com/containernetworking/cni/libcni").is_dir():
            raise RuntimeError("cnirun needs golang-go and golang-github-appc-cni-dev: run `make setup` as root")
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
               "GOCACHE": str(CNIRUN_DIR / "gocache")}
        cp = subprocess.run(["go", "build", "-o", str(binary) + ".new", CNIRUN_SRC.name], cwd=CNIRUN_SRC.parent,
                            capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            raise RuntimeError(f"cnirun build failed ({cp.returncode}): {cp.stderr.strip()[-2000:]}")
        os.replace(str(binary) + ".new", binary)
        stamp.write_text(want)
    return binary


def build_plugin(bin_dir: Path) -> Path:
    """The deployable: the zipapp for the system python3, as `meshnet cni install` ships it."""
    from meshnet.cni.bundle import build

    bin_dir.mkdir(parents=True, exist_ok=True)
    return build(bin_dir / "meshnet-cni")


def _ip(*args: str) -> None:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {cp.stderr.strip()}")


@dataclass
class CniOutcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def pod_cidr(pod: Pod) -> str:
    """The pod's address as a main plugin's result lists it (a stand-in before the bridge gave one)."""
    if not pod.ip4:
        return "10.255.255.2/32"
    return f"{pod.ip4}/64" if ":" in pod.ip4 else f"{pod.ip4}/24"


@dataclass
class Pod:
    name: str  # namespace name
    ns: Netns
    container_id: str
    k8s_namespace: str
    k8s_name: str
    ip4: str = ""

    @property
    def path(self) -> str:
        return self.ns.path

    def cni_args(self) -> str:
        return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.k8s_namespace};K8S_POD_NAME={self.k8s_name}"


@dataclass
class CniNode:
    """A node namespace with a conflist bridge + host-local + meshnet-cni. Use as a context manager."""

    cnirun: Path
    plugin_dir: Path
    plugin_conf: Mapping[str, Any] = field(default_factory=dict)
    cni_version: str = "1.0.0"
    # The plugin works alone unless a test points it at its own agent (see test_cni_agent.py).
    agent_socket: str = "off"
    prefix: str = field(default_factory=lambda: f"{NS_PREFIX}{secrets.token_hex(4)}")
    names: list[str] = field(default_factory=list, init=False)
    pods: dict[str, Pod] = field(default_factory=dict, init=False)

    subnet: str = ""  # default: a random 10.x.y.0/24

    def __post_init__(self) -> None:
        self.bridge = f"mn-br{secrets.token_hex(4)}"
        self.subnet = self.subnet or f"10.{random.randint(1, 254)}.{random.randint(0, 255)}.0/24"
        self.tmp = Path(tempfile.mkdtemp(prefix="meshnet-cni-test-"))
        self.conflist = self.tmp / "net.conflist"
        self.log_file = self.tmp / "meshnet-cni.log"

    def __enter__(self) -> CniNode:
        try:
            self.node = self._new_ns("node")
            self.write_conflist()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_ns(self, role: str) -> Netns:
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        CREATED_NAMESPACES.append(name)
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        return Netns.resolve(name)

    def write_conflist(self, **overrides: Any) -> None:
        meshnet = {"type": "meshnet-cni", "log_file": str(self.log_file), "log_level": "debug",
                   "capabilities": {"io.kubernetes.cri.pod-annotations": True}, **self.plugin_conf, **overrides}
        conf = {
            "cniVersion": self.cni_version,
            "name": f"{self.prefix}-net",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": str(self.tmp / "ipam")}},
                meshnet,
            ],
        }
        self.conflist.write_text(json.dumps(conf, indent=2))

    def new_pod(self, role: str, k8s_namespace: str = "default", k8s_name: str | None = None) -> Pod:
        ns = self._new_ns(role)
        pod = Pod(f"{self.prefix}-{role}", ns, secrets.token_hex(16), k8s_namespace, k8s_name or role)
        self.pods[role] = pod
        return pod

    def env(self) -> dict[str, str]:
        return {**os.environ, "CNI_PATH": f"{REF_PLUGINS}:{self.plugin_dir}", "CNI_CACHE_DIR": str(self.tmp / "cache"),
                "MESHNET_CNI_AGENT_SOCKET": self.agent_socket}

    def argv(self, op: str, pod: Pod, annotations: Mapping[str, str] | None = None) -> list[str]:
        cap = json.dumps({"io.kubernetes.cri.pod-annotations": dict(annotations)}) if annotations is not None else ""
        # cnirun runs in the node namespace: the bridge and host veths are created there.
        return ["nsenter", f"--net={self.node.path}", "--", str(self.cnirun), op, str(self.conflist), pod.path,
                pod.container_id, "eth0", pod.cni_args(), cap]

    def run(self, op: str, pod: Pod, annotations: Mapping[str, str] | None = None) -> CniOutcome:
        cp = subprocess.run(self.argv(op, pod, annotations), capture_output=True, text=True, timeout=120,
                            env=self.env(), stdin=subprocess.DEVNULL)
        out = CniOutcome(cp.returncode, cp.stdout, cp.stderr)
        if op == "add" and out.ok:
            pod.ip4 = out.result()["ips"][0]["address"].split("/")[0]  # the pod's first address (v4 or v6)
        return out

    def add(self, pod: Pod, annotations: Mapping[str, str] | None = None) -> CniOutcome:
        return self.run("add", pod, annotations)

    def check(self, pod: Pod, annotations: Mapping[str, str] | None = None) -> CniOutcome:
        return self.run("check", pod, annotations)

    def delete(self, pod: Pod, annotations: Mapping[str, str] | None = None) -> CniOutcome:
        return self.run("del", pod, annotations)

    def plugin_only(self, command: str, pod: Pod, annotations: Mapping[str, str] | None = None,
                    prev: Mapping[str, Any] | None = None, python_flags: Sequence[str] = (),
                    netns: str | None = None) -> CniOutcome:
        """Exec meshnet-cni alone, exactly as libcni would (config on stdin, CNI_* env), to see its
        raw stdout: the result or the error object with its code (libcni keeps only the message)."""
        conf = json.loads(self.conflist.read_text())
        entry = {k: v for k, v in conf["plugins"][-1].items() if k != "capabilities"}
        entry.update(cniVersion=conf["cniVersion"], name=conf["name"])
        if annotations is not None:
            entry["runtimeConfig"] = {"io.kubernetes.cri.pod-annotations": dict(annotations)}
        if prev is not None:
            entry["prevResult"] = {"ips": [{"address": pod_cidr(pod)}], **prev}  # a chained ADD needs the ips
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
               "CNI_NETNS": pod.path if netns is None else netns,
               "CNI_IFNAME": "eth0", "CNI_ARGS": pod.cni_args(), "CNI_PATH": self.env()["CNI_PATH"],
               "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "MESHNET_CNI_AGENT_SOCKET": self.agent_socket}
        plugin = str(self.plugin_dir / "meshnet-cni")
        argv = ["/usr/bin/python3", "-IS", *python_flags, plugin] if python_flags else [plugin]
        cp = subprocess.run(["nsenter", f"--net={self.node.path}", "--", *argv], input=json.dumps(entry),
                            capture_output=True, text=True, timeout=60, env=env)
        return CniOutcome(cp.returncode, cp.stdout, cp.stderr)

    def close(self) -> None:
        errors = []
        for name in reversed(self.names):
            cp = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=10)
            if cp.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
                errors.append(f"{name}: {cp.stderr.strip()}")
        self.names.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


# ------------------------------------------------------------------------------ rule inspection
def save(ns: Netns, tool: str = "iptables-nft-save") -> str:
    return ns.run([tool]).stdout


def normalise_save(text: str) -> str:
    """iptables-save text without comments and counters, so two namespaces compare equal."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0]  # ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
        out.append(line)
    return "\n".join(out) + "\n"


def golden_restored(golden_text: str, variant: str = "nft") -> str:
    """What iptables-restore of a golden text produces in a fresh namespace (normalised save)."""
    name = f"{NS_PREFIX}{secrets.token_hex(4)}-ref"
    CREATED_NAMESPACES.append(name)
    _ip("netns", "add", name)
    try:
        ns = Netns.resolve(name)
        ns.run([f"iptables-{variant}-restore"], input=golden_text)
        return normalise_save(ns.run([f"iptables-{variant}-save"]).stdout)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def interception_state(ns: Netns) -> list[str]:
    """Everything Istio/meshnet could have left in a namespace (empty list = clean).

    Legacy tables are looked up in /proc first: reading them with iptables-legacy-save would
    create them.
    """
    found: list[str] = []
    for tool in ("iptables-nft-save", "ip6tables-nft-save"):
        found += [f"{tool}: {ln}" for ln in ns.run([tool]).stdout.splitlines() if "ISTIO" in ln]
    for fam, names in ((4, "ip_tables_names"), (6, "ip6_tables_names")):
        try:
            tables = ns.read_proc_net(names).split()
        except FileNotFoundError:
            tables = []
        if tables:
            tool = "iptables-legacy-save" if fam == 4 else "ip6tables-legacy-save"
            found += [f"{tool}: {ln}" for ln in ns.run([tool]).stdout.splitlines() if "ISTIO" in ln]
    found += [f"nft: {ln}" for ln in ns.run(["nft", "list", "tables"]).stdout.splitlines() if "istio" in ln]
    for ip_fam in ("-4", "-6"):
        found += [f"ip {ip_fam} rule: {ln}" for ln in ns.run(["ip", ip_fam, "rule"]).stdout.splitlines()
                  if "fwmark" in ln]
    return found


def concurrent(argvs: Sequence[list[str]], env: Mapping[str, str], timeout: float = 300) -> list[CniOutcome]:
    """Start every command at once, then collect them all."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env),
                              stdin=subprocess.DEVNULL) for a in argvs]
    outs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        outs.append(CniOutcome(proc.returncode, stdout, stderr))
    return outs
