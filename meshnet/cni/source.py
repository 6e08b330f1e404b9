"""Where a pod's facts come from: the Kubernetes API (when a kubeconfig is configured) or the
annotations the runtime passes through the `io.kubernetes.cri.pod-annotations` capability."""

from __future__ import annotations

from meshnet.cni.config import PluginConfig, runtime_annotations
from meshnet.cni.log import Log
from meshnet.cni.pod import PodInfo, pod_from_api
from meshnet.cni.protocol import CniEnv

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def load_pod(env: CniEnv, config: PluginConfig, doc: Mapping[str, Any], log: Log) -> PodInfo:
    namespace, name = env.pod_namespace, env.pod_name
    # No API round trip for pods that are skipped anyway (no pod args, excluded namespace).
    if config.kubeconfig and namespace and name and namespace not in config.exclude_namespaces:
        from meshnet.cni.kube import get_pod, load_kubeconfig  # lazy: ssl/urllib only on this path

        target = load_kubeconfig(config.kubeconfig)
        obj = get_pod(target, namespace, name, config.k8s_timeout)
        log.debug("pod read from the Kubernetes API", server=target.server)
        return pod_from_api(obj, namespace, name)
    return PodInfo(namespace=namespace, name=name, annotations=runtime_annotations(doc) or {})
