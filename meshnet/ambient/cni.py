"""Ambient mode in meshnet-cni: the plugin hands enrolled pods to the node agent, which programs them.

As in istio-cni, the exec'd plugin does not program an ambient pod itself: the node agent does
(`meshnet cni agent`, whose warm workers run the plugin's ADD/DEL), and ADD fails when no agent
is there, so no ambient pod starts without its redirection. The agent records every pod it
programmed under `state_dir` and, when it (re)starts with `--ambient-conflist`, reconciles each
recorded pod whose namespace still exists, and drops the others: Istio's reconcile-on-start.

Enrolment follows istio-cni, by LABELS: the pod or its namespace carries `istio.io/dataplane-mode=ambient`,
the pod does not opt out (label `istio.io/dataplane-mode=none`), and it has no sidecar. Where they come from:

* pod labels: the Kubernetes API when the plugin has a kubeconfig (at ADD), else the CRI sandbox (kubelet
  copies the pod's labels onto it). The sandbox is not known to the runtime during ADD (containerd 1.6:
  ListPodSandbox is empty while the CNI chain runs), so without the API the agent's runtime pass
  (`--ambient-interval S --cri ENDPOINT`) enrolls pods labelled ambient and un-enrolls pods labelled
  none a moment after they start, as istio-cni's agent does for pods whose labels it learns late;
* namespace labels: the Kubernetes API (GET the Namespace) when a kubeconfig is configured;
* `namespaces` in the config: an explicit FALLBACK for nodes without the API, the namespaces an operator
  knows are labelled ambient; ignored when the API is configured.

`host_probes: true` also programs the node side in the agent's own namespace (the probe SNAT
rules at agent start, each pod's addresses in the probe sets); off by default.
"""

from __future__ import annotations

import os

from meshnet.ambient.spec import L_DATAPLANE_MODE, PROBE_IPSET, AmbientSpec, enrolled, overrides_from_annotations
from meshnet.errors import SpecError
from meshnet.lite import jsonlite as json
from meshnet.lite.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from meshnet.ambient.runtime_sync import KubeAccess
    from meshnet.cni.config import PluginConfig
    from meshnet.cni.pod import PodInfo

IN_AGENT = False  # set by the agent before it forks its workers
DEFAULT_STATE_DIR = "/var/run/meshnet-cni/ambient"
A_SIDECAR_STATUS = "sidecar.istio.io/status"


@dataclass(frozen=True)
class AmbientCniConfig:
    spec: AmbientSpec
    namespaces: tuple[str, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR
    host_probes: bool = False


def parse_ambient(raw: object) -> AmbientCniConfig:
    """The `ambient` object of the plugin configuration (SpecError names a bad field)."""
    from meshnet.ambient.spec import spec_from_mapping

    if not isinstance(raw, dict):
        raise SpecError("ambient", raw, "must be an object")
    doc = dict(raw)
    namespaces = doc.pop("namespaces", [])
    state_dir = doc.pop("state_dir", DEFAULT_STATE_DIR)
    host_probes = doc.pop("host_probes", False)
    if not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces):
        raise SpecError("ambient.namespaces", namespaces, "must be a list of namespace names")
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        raise SpecError("ambient.state_dir", state_dir, "must be an absolute path")
    if not isinstance(host_probes, bool):
        raise SpecError("ambient.host_probes", host_probes, "expected true or false")
    if "ipv6" in doc:
        doc["enable_ipv6"] = doc.pop("ipv6")
    return AmbientCniConfig(spec_from_mapping(doc, "ambient"), tuple(namespaces), state_dir, host_probes)


def pod_enrolled(pod: PodInfo, cfg: AmbientCniConfig, plugin: PluginConfig | KubeAccess | None = None) -> bool:
    return enrollment(pod, cfg, plugin)[0]


def enrollment(pod: PodInfo, cfg: AmbientCniConfig,
               plugin: PluginConfig | KubeAccess | None = None) -> tuple[bool, str]:
    """(enrolled, why). `pod.labels` None: not known here (ADD without the API); `plugin` gives the kubeconfig."""
    if A_SIDECAR_STATUS in pod.annotations or pod.has_proxy:
        return False, "has a sidecar"  # a sidecar pod is the sidecar path's
    labels = pod.labels or {}
    mode = labels.get(L_DATAPLANE_MODE)
    if mode is not None:  # the pod's own label decides, without asking about its namespace
        return enrolled(labels, {}), f"pod label {L_DATAPLANE_MODE}={mode}"
    ns_labels, source = namespace_labels(pod.namespace, cfg, plugin)
    ns_mode = ns_labels.get(L_DATAPLANE_MODE)
    return enrolled({}, ns_labels), f"namespace {pod.namespace} ({source}): {L_DATAPLANE_MODE}={ns_mode or 'unset'}"


def namespace_labels(namespace: str, cfg: AmbientCniConfig,
                     plugin: PluginConfig | KubeAccess | None) -> tuple[dict[str, str], str]:
    """The namespace's labels from the API when configured, else the config's list (the no-API fallback)."""
    if plugin is not None and plugin.kubeconfig:
        from meshnet.cni.kube import get_namespace, load_kubeconfig

        obj = get_namespace(load_kubeconfig(plugin.kubeconfig), namespace, plugin.k8s_timeout)
        raw = (obj.get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}, "API labels"
    listed = namespace in cfg.namespaces
    return ({L_DATAPLANE_MODE: "ambient"} if listed else {}), "config namespaces"


# ------------------------------------------------------------------------------------ records
def _record_path(cfg: AmbientCniConfig, container_id: str) -> str:
    if not container_id or not all(c.isalnum() or c in "-_." for c in container_id) or container_id[0] == ".":
        raise SpecError("CNI_CONTAINERID", container_id, "not usable as a record name")
    return os.path.join(cfg.state_dir, f"{container_id}.json")


def _write_record(cfg: AmbientCniConfig, container_id: str, record: dict[str, Any]) -> None:
    os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    path = _record_path(cfg, container_id)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(record))
    os.replace(tmp, path)  # a reader never sees half a record


def records(cfg: AmbientCniConfig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(cfg.state_dir))
    except FileNotFoundError:
        return out
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(cfg.state_dir, name)) as fh:
                    out[name.removesuffix(".json")] = json.loads(fh.read())
            except (OSError, ValueError):
                continue
    return out


# ------------------------------------------------------------------------------------ node side
def _own_netns() -> Any:
    from meshnet.apply.netns import Netns

    return Netns.resolve(f"/proc/{os.getpid()}/ns/net")


def _probe_sets(addresses: list[str], add: bool, backend: str) -> None:
    """The pod's addresses in (or out of) the node's probe sets (ipset; nft sets for nftables)."""
    node = _own_netns()
    for address in addresses:
        ip = address.split("/", 1)[0]
        fam = 6 if ":" in ip else 4
        if backend == "nftables":
            verb = "add" if add else "delete"
            node.run(["nft", verb, "element", "inet", "istio-ambient-nat", f"{PROBE_IPSET}-v{fam}", f"{{ {ip} }}"],
                     check=False)
        else:
            argv = ["ipset", "add" if add else "del", f"{PROBE_IPSET}-v{fam}", ip, "-exist"]
            node.run(argv, check=False)


# ------------------------------------------------------------------------------------ ADD / DEL
def add(netns: Any, container_id: str, pod: PodInfo, cfg: AmbientCniConfig, backend: str,
        addresses: list[str]) -> str:
    """Program the pod (in the agent only). Returns the applier's message."""
    from meshnet.ambient.apply import apply_ambient
    from meshnet.errors import ApplyError

    if not IN_AGENT:
        raise ApplyError("ambient pods are programmed by the node agent, and `meshnet cni agent` is not running")
    spec = overrides_from_annotations(cfg.spec, pod.annotations)
    result = apply_ambient(netns, spec, backend=backend, reconcile=True)
    _write_record(cfg, container_id, {"netns": netns.path, "namespace": pod.namespace, "name": pod.name,
                                      "annotations": dict(pod.annotations), "addresses": addresses,
                                      "backend": result.backend})
    if cfg.host_probes:
        _probe_sets(addresses, True, result.backend)
    return result.message


def delete(container_id: str, cfg: AmbientCniConfig) -> None:
    """Forget the pod (its rules die with, or are cleaned from, its namespace by the caller)."""
    try:
        path = _record_path(cfg, container_id)
    except SpecError:
        return
    try:
        with open(path) as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return
    if cfg.host_probes:
        _probe_sets(list(record.get("addresses") or []), False, str(record.get("backend", "")))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------------ agent start
def agent_start(conflist: str) -> list[str]:
    """At agent (re)start: host rules if asked, then every recorded pod reconciled. One line per pod."""
    from meshnet.ambient.apply import apply_ambient
    from meshnet.apply.netns import Netns

    cfg, backend = _from_conflist(conflist)
    lines: list[str] = []
    if cfg.host_probes:
        node_backend = "nftables" if backend == "nftables" else ("iptables-nft" if backend == "auto" else backend)
        spec = cfg.spec
        if node_backend == "nftables" and not spec.kubelet_uid:
            from meshnet.ambient.apply import kubelet_uid

            spec = spec.with_changes(kubelet_uid=kubelet_uid())
        lines.append("node: " + apply_ambient(_own_netns(), spec, backend=node_backend, reconcile=True,
                                               host=True).message)
    for container_id, record in records(cfg).items():
        path = str(record.get("netns", ""))
        if not path or not os.path.exists(path):
            delete(container_id, cfg)  # the pod went away while no agent ran
            lines.append(f"{record.get('namespace')}/{record.get('name')}: gone, record dropped")
            continue
        annotations = record.get("annotations") or {}
        spec = overrides_from_annotations(cfg.spec, annotations)
        result = apply_ambient(Netns.resolve(path), spec, backend=str(record.get("backend") or backend),
                               reconcile=True)
        if cfg.host_probes:
            _probe_sets(list(record.get("addresses") or []), True, result.backend)
        lines.append(f"{record.get('namespace')}/{record.get('name')}: {result.message}")
    return lines


def _from_conflist(path: str) -> tuple[AmbientCniConfig, str]:
    try:
        with open(path) as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise SpecError("--ambient-conflist", path, f"cannot read it ({exc})") from None
    plugins = doc.get("plugins") if isinstance(doc, dict) and "plugins" in doc else [doc]
    for plugin in plugins if isinstance(plugins, list) else []:
        if isinstance(plugin, dict) and plugin.get("type") == "meshnet-cni" and "ambient" in plugin:
            backend = plugin.get("backend", "auto")
            return parse_ambient(plugin["ambient"]), backend if isinstance(backend, str) else "auto"
    raise SpecError("--ambient-conflist", path, "no meshnet-cni plugin with an `ambient` section")
