"""deploy/k8s: the DaemonSet validates offline against the Kubernetes schemas Istio's releases support, refers
to the image `make images` builds, and its `install` step works in that image, in its own posture."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from harness.cri_helpers import IMAGE_REF, CriNode

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
DAEMONSET = K8S / "meshnet-cni-daemonset.yaml"
# Istio 1.27 supports Kubernetes 1.29-1.33, 1.28 supports 1.30-1.34 (istio.io/latest/docs/releases/supported-releases).
ISTIO_K8S_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"]


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


def daemonset() -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == "DaemonSet")


@pytest.mark.parametrize("version", ISTIO_K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"ServiceAccount", "DaemonSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


@pytest.mark.parametrize(("path", "value"), [
    (["spec", "template", "spec", "containers", 0, "imagePullPolicyy"], "Never"),  # unknown field (strict)
    (["spec", "template", "spec", "containers", 0, "securityContext", "runAsUser"], "root"),  # wrong type
    (["spec", "selector"], None),  # required field missing
])
def test_the_validator_rejects_a_broken_daemonset(path: list[Any], value: Any) -> None:
    doc = copy.deepcopy(daemonset())
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, ISTIO_K8S_VERSIONS[-1], strict=True)


def test_every_container_runs_the_one_meshnet_image_and_kustomize_can_retarget_it() -> None:
    images = {c["image"] for c in daemonset()["spec"]["template"]["spec"]["containers"]}
    assert images == {IMAGE_REF}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [DAEMONSET.name]
    name, _, tag = IMAGE_REF.rpartition(":")
    assert kustomization["images"] == [{"name": name, "newTag": tag}]


def install_script() -> str:
    """The `install` container's shell function, without its re-check loop and with /host under /tmp."""
    container = next(c for c in daemonset()["spec"]["template"]["spec"]["containers"] if c["name"] == "install")
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    body = script[script.index("install() {"):script.index("\n}\n", script.index("install() {")) + 3]
    return body.replace("/host/", "/tmp/host/")


@pytest.mark.netns
def test_the_daemonset_install_step_works_in_the_image_with_no_capabilities(cri_node: CriNode) -> None:
    """What the installer does on a node, in a pod of the built image: uid 0, capabilities dropped (ALL)."""
    conflist = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
                "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": False,
                             "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}}]}
    script = (
        "set -e; mkdir -p /tmp/host/etc/cni/net.d /tmp/host/opt/cni/bin; "
        f"echo '{json.dumps(conflist)}' > /tmp/host/etc/cni/net.d/10-bridge.conflist\n"
        f"{install_script()}install\ninstall >/dev/null\n"  # twice: the minute loop re-runs it
        "cmp /opt/meshnet/meshnet-cni /tmp/host/opt/cni/bin/meshnet-cni && echo SAME-PLUGIN\n"
        "cat /tmp/host/etc/cni/net.d/10-bridge.conflist\n")
    sandbox = cri_node.run_pod("installer", "kube-system").data
    try:
        run = cri_node.container(sandbox["id"], ["/bin/sh", "-c", script], user=0, group=0)
        assert run.ok, run.data
        log = run.data["log"]
        assert "SAME-PLUGIN" in log, log
        chained = json.loads(log[log.index("{"):])
        assert [p["type"] for p in chained["plugins"]] == ["bridge", "meshnet-cni"]
        entry = chained["plugins"][1]
        assert entry["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}
        assert "kube-system" in entry["exclude_namespaces"] and "istio-system" in entry["exclude_namespaces"]
    finally:
        cri_node.stop_pod(sandbox["id"])
        cri_node.rm_pod(sandbox["id"])
