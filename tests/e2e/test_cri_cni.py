"""meshnet-cni under containerd's CRI plugin: pod sandboxes made by RunPodSandbox, as kubelet makes them.

The node (tests/harness/cri_helpers.py, one per session) has the conflist bridge (isGateway false, ipMasq false,
a private /24) + meshnet-cni, chained by `meshnet cni install` with the plugin file copied out of the
image (build/images/meshnet.tar), exactly what the DaemonSet's installer does on a node. containerd
passes the pod annotations through the `io.kubernetes.cri.pod-annotations` capability; StopPodSandbox
is the first CNI DEL, RemovePodSandbox the second (empty CNI_NETNS, no prevResult).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
from harness.cni_helpers import golden_restored, normalise_save
from harness.cri_helpers import SIDECAR, CriNode, istio_lines, save
from harness.golden_cases import CNI_CASES, golden_path

pytestmark = pytest.mark.netns


@contextlib.contextmanager
def held(netns: str) -> Iterator[str]:
    """Keep a pod's namespace alive past StopPodSandbox (which unmounts it) to look inside afterwards."""
    proc = subprocess.Popen(["nsenter", f"--net={netns}", "--", "sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        path = f"/proc/{proc.pid}/ns/net"
        for _ in range(500):  # nsenter setns()es then execs sleep in the same process
            with contextlib.suppress(OSError):
                if os.readlink(path) == _nsid(netns):
                    break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"could not hold {netns}")
        yield path
    finally:
        proc.kill()
        proc.wait()


def _nsid(path: str) -> str:
    return f"net:[{os.stat(path).st_ino}]"


def expected(case: str) -> str:
    return golden_restored(golden_path("cni-plugin", case).read_text(), "nft")


def pod_name(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


def remove(node: CriNode, pod_id: str) -> None:
    assert node.stop_pod(pod_id).ok
    assert node.rm_pod(pod_id).ok


# ------------------------------------------------------------------------------ the chain
def test_meshnet_cni_is_chained_after_the_bridge_with_pod_annotations(cri_node: CriNode) -> None:
    conf = json.loads(cri_node.conflist.read_text())
    bridge, meshnet = conf["plugins"]
    assert (bridge["type"], bridge["isGateway"], bridge["ipMasq"]) == ("bridge", False, False)
    assert meshnet["type"] == "meshnet-cni"
    assert meshnet["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}
    # The plugin in the CNI bin dir is the image's /opt/meshnet/meshnet-cni, byte for byte.
    installed = (cri_node.base / "cni" / "bin" / "meshnet-cni").read_bytes()
    assert installed == (cri_node.base / "meshnet-cni.from-image").read_bytes()
    assert cri_node.cri("status").data["NetworkReady"]["status"] is True


# ------------------------------------------------------------------------------ Istio's goldens
@pytest.mark.parametrize("case", sorted(c for c in CNI_CASES if "uid" not in CNI_CASES[c]))
def test_run_pod_sandbox_gives_the_golden_rules_and_stop_removes_them(cri_node: CriNode, case: str) -> None:
    name = pod_name(case)
    pod = cri_node.run_pod(name, "shop", {**SIDECAR, **CNI_CASES[case]["annotations"]}).data
    assert normalise_save(save(pod["netns"])) == expected(case)
    if case == "tproxy":
        rules = subprocess.run(["nsenter", f"--net={pod['netns']}", "ip", "rule"], capture_output=True,
                               text=True).stdout
        assert "fwmark 0x539 lookup 133" in rules
    with held(pod["netns"]) as netns:
        stop = cri_node.stop_pod(pod["id"])
        assert stop.ok, stop.data
        assert istio_lines(netns) == []  # StopPodSandbox's DEL removed every rule
    rm = cri_node.rm_pod(pod["id"])  # the second DEL: empty CNI_NETNS, no prevResult
    assert rm.ok, rm.data
    assert all(p["id"] != pod["id"] for p in cri_node.pods())


def test_custom_proxy_uid_from_the_plugin_defaults(cri_node: CriNode) -> None:
    facts = CNI_CASES["custom-uid"]
    try:
        cri_node.write_conflist(defaults={"proxy_uid": facts["uid"], "proxy_gid": facts["gid"]})
        cri_node.restart()  # containerd reads the conflist when it starts
        pod = cri_node.run_pod(pod_name("uid"), "shop", SIDECAR).data
        assert normalise_save(save(pod["netns"])) == expected("custom-uid")
        remove(cri_node, pod["id"])
    finally:
        cri_node.write_conflist()
        cri_node.restart()


def test_stop_and_remove_are_two_dels_the_second_without_a_namespace(cri_node: CriNode) -> None:
    name = pod_name("twice")
    pod = cri_node.run_pod(name, "shop", SIDECAR).data
    remove(cri_node, pod["id"])
    msgs = [(r["ctx"].split()[0], r["msg"]) for r in cri_node.cni_log()
            if r.get("ctx", "").startswith(("ADD", "DEL")) and f" shop/{name} " in r["ctx"] + " "]
    assert msgs == [("ADD", "interception programmed"), ("DEL", "interception removed"),
                    ("DEL", "namespace already gone: nothing to remove")], msgs


# ------------------------------------------------------------------------------ refusals and skips
@pytest.mark.parametrize(("annotation", "value", "named"), [
    ("traffic.sidecar.istio.io/excludeInboundPorts", "80,http", "excludeInboundPorts"),
    ("sidecar.istio.io/interceptionMode", "BRIDGE", "interceptionMode"),
])
def test_bad_annotation_fails_run_pod_sandbox_and_leaves_no_sandbox(cri_node: CriNode, annotation: str,
                                                                    value: str, named: str) -> None:
    name = pod_name("bad")
    before = {p["id"] for p in cri_node.pods()}
    run = cri_node.run_pod(name, "shop", {**SIDECAR, annotation: value}, check=False)
    assert not run.ok
    error = run.data["error"]
    assert 'plugin type="meshnet-cni" failed (add)' in error and named in error, error
    assert "Traceback" not in error
    assert {p["id"] for p in cri_node.pods()} == before  # containerd cleaned the sandbox up
    assert all(p["name"] != name for p in cri_node.pods())


@pytest.mark.parametrize(("namespace", "annotations"), [("kube-system", SIDECAR), ("shop", {})],
                         ids=["kube-system", "no-sidecar-status"])
def test_pods_meshnet_must_not_touch_are_left_alone(cri_node: CriNode, namespace: str,
                                                    annotations: dict[str, str]) -> None:
    pod = cri_node.run_pod(pod_name("alone"), namespace, annotations).data
    assert pod["ip"], "the bridge's result must still come through"
    assert istio_lines(pod["netns"]) == []
    remove(cri_node, pod["id"])


# ------------------------------------------------------------------------------ concurrency
def test_twenty_concurrent_sandboxes_all_get_the_golden_rules(cri_node: CriNode) -> None:
    names = [pod_name(f"burst{i}") for i in range(20)]
    procs = [subprocess.Popen(cri_node.run_pod_argv(n, "shop", SIDECAR), env=cri_node.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for n in names]
    outs = [p.communicate(timeout=300) for p in procs]
    pods = []
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, (stdout, stderr)
        pods.append(json.loads(stdout))
    try:
        want = expected("basic")
        assert len({p["ip"] for p in pods}) == 20
        for pod in pods:
            assert normalise_save(save(pod["netns"])) == want, pod["id"]
    finally:  # stopped and removed concurrently too: 20 DELs at once, then 20 second DELs
        results = []
        for op in ("stop", "rm"):
            procs = [subprocess.Popen(cri_node.cri_argv(op, p["id"]), env=cri_node.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for p in pods]
            results += [(g.wait(timeout=300), g.communicate()) for g in procs]
    assert all(rc == 0 for rc, _ in results), results
    assert not any(p["name"].startswith("burst") for p in cri_node.pods())
