"""The ambient agent's pass over the runtime's sandboxes (`meshnet cni agent --ambient-interval S --cri E`).

kubelet copies a pod's labels onto its CRI sandbox, but containerd does not know a sandbox while its
CNI ADD runs (measured on containerd 1.6: ListPodSandbox is empty then), so a node without the
Kubernetes API learns a pod's own `istio.io/dataplane-mode` label here, a moment after the pod
started, as istio-cni's agent learns labels it did not have at ADD: pods labelled ambient are
programmed and recorded, recorded pods that are no longer enrolled (label none) are cleaned up.
"""

from __future__ import annotations

import os

from meshnet.errors import SpecError
from meshnet.lite import jsonlite as json
from meshnet.lite.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from meshnet.ambient.cni import AmbientCniConfig


def sync_with_runtime(conflist: str, endpoint: str) -> list[str]:
    """The agent's pass over the runtime's ready sandboxes, by their labels (kubelet puts the pod's
    labels on the sandbox): enroll those that say ambient and are not programmed yet, un-enroll
    programmed ones that opt out (or are no longer enrolled). One line per change."""
    from meshnet.ambient.apply import apply_ambient, cleanup_ambient
    from meshnet.ambient.cni import (
        _probe_sets,
        _write_record,
        delete,
        enrollment,
        overrides_from_annotations,
        records,
    )
    from meshnet.apply.netns import Netns
    from meshnet.cni.pod import PodInfo
    from meshnet.cri import list_sandboxes

    cfg, backend, plugin = _plugin_from_conflist(conflist)
    known = records(cfg)
    lines: list[str] = []
    for sb in list_sandboxes(endpoint):
        labels = {k: v for k, v in (sb.get("labels") or {}).items() if not k.startswith("io.kubernetes.")}
        pod = PodInfo(namespace=sb["namespace"], name=sb["name"], annotations=sb.get("annotations") or {},
                      labels=labels)
        want, why = enrollment(pod, cfg, plugin)
        have = sb["id"] in known
        path = sb.get("netns") or (f"/proc/{sb['pid']}/ns/net" if sb.get("pid") else "")
        if want == have or not path or not os.path.exists(path):
            continue
        netns = Netns.resolve(path)
        if want:
            spec = overrides_from_annotations(cfg.spec, pod.annotations)
            result = apply_ambient(netns, spec, backend=backend, reconcile=True)
            _write_record(cfg, sb["id"], {"netns": path, "namespace": pod.namespace, "name": pod.name,
                                          "annotations": dict(pod.annotations), "addresses": [sb["ip"]] if sb.get("ip")
                                          else [], "backend": result.backend})
            if cfg.host_probes and sb.get("ip"):
                _probe_sets([sb["ip"]], True, result.backend)
            lines.append(f"{pod.namespace}/{pod.name}: enrolled ({why}): {result.message}")
        else:
            removed = cleanup_ambient(netns)
            delete(sb["id"], cfg)
            lines.append(f"{pod.namespace}/{pod.name}: un-enrolled ({why}): {removed.message}")
    return lines


@dataclass(frozen=True)
class KubeAccess:
    """The plugin entry's Kubernetes API settings (what enrolment needs of a PluginConfig)."""

    kubeconfig: str = ""
    k8s_timeout: float = 5.0


def _plugin_from_conflist(path: str) -> tuple[AmbientCniConfig, str, KubeAccess]:
    from meshnet.ambient.cni import _from_conflist

    cfg, backend = _from_conflist(path)
    with open(path) as fh:
        doc = json.loads(fh.read())
    plugins = doc.get("plugins") if "plugins" in doc else [doc]
    entry = next(p for p in plugins if isinstance(p, dict) and p.get("type") == "meshnet-cni" and "ambient" in p)
    kubeconfig, timeout = entry.get("kubeconfig", ""), entry.get("k8s_timeout", 5.0)
    if not isinstance(kubeconfig, str) or isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise SpecError("--ambient-conflist", path, "kubeconfig must be a path and k8s_timeout seconds")
    return cfg, backend, KubeAccess(kubeconfig, float(timeout))
