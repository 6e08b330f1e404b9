"""Ambient enrolment by labels, as istio-cni decides it (issue 13, "the node agent"): the decision alone.

The pod's own `istio.io/dataplane-mode` label decides first (ambient: in, none or anything else: out);
without one, the namespace's labels from the Kubernetes API when a kubeconfig is configured, else the
config's `namespaces` list (the explicit fallback for nodes without the API). Annotations never enroll.
The API is a stub of urllib's urlopen here (the same GET path as the pod's, which the e2e tests serve).
"""

from __future__ import annotations

import io
import json
from email.message import Message
from typing import Any

import pytest

from meshnet.ambient.cni import enrollment, parse_ambient, pod_enrolled
from meshnet.cni.config import parse_config
from meshnet.cni.pod import PodInfo
from meshnet.cni.protocol import CniError

CFG = parse_ambient({"namespaces": ["mesh"]})
MODE = "istio.io/dataplane-mode"


def pod(namespace: str, labels: dict[str, str] | None, annotations: dict[str, str] | None = None) -> PodInfo:
    return PodInfo(namespace=namespace, name="p", annotations=annotations or {}, labels=labels)


@pytest.mark.parametrize(("namespace", "labels", "expected"), [
    ("plain", {MODE: "ambient"}, True),  # the pod's label, whatever its namespace
    ("mesh", {MODE: "none"}, False),  # opt-out beats the namespace
    ("mesh", {MODE: "sidecar"}, False),  # any other value is not ambient
    ("mesh", {"app": "web"}, True),  # no pod label: the namespace (config fallback)
    ("mesh", None, True),  # labels unknown (ADD without the API): the namespace only
    ("plain", {}, False),
    ("plain", None, False),
])
def test_pod_label_then_namespace(namespace: str, labels: dict[str, str] | None, expected: bool) -> None:
    assert pod_enrolled(pod(namespace, labels), CFG) is expected


def test_annotations_do_not_enroll_and_sidecars_never_do() -> None:
    assert not pod_enrolled(pod("plain", {}, {MODE: "ambient"}), CFG)
    assert not pod_enrolled(pod("plain", None, {MODE: "ambient"}), CFG)
    sidecar = pod("mesh", {MODE: "ambient"}, {"sidecar.istio.io/status": "{}"})
    assert enrollment(sidecar, CFG) == (False, "has a sidecar")


class _Resp(io.BytesIO):
    def __enter__(self) -> _Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _api(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, namespaces: dict[str, dict[str, str]]) -> Any:
    import urllib.error
    import urllib.request

    asked: list[str] = []

    def urlopen(request: Any, timeout: float, context: Any) -> _Resp:
        asked.append(request.full_url)
        assert request.get_header("Authorization") == "Bearer t0k"
        name = request.full_url.rsplit("/", 1)[1]
        if name not in namespaces:
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", Message(), None)
        return _Resp(json.dumps({"kind": "Namespace", "metadata": {"name": name,
                                                                   "labels": namespaces[name]}}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "http://api.invalid:6443"}}],
        "users": [{"name": "u", "user": {"token": "t0k"}}]}))
    plugin = parse_config({"cniVersion": "1.0.0", "kubeconfig": str(kubeconfig), "ambient": {"namespaces": ["mesh"]}})
    return plugin, asked


def test_namespace_labels_from_the_api_and_the_list_is_only_a_fallback(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Any) -> None:
    plugin, asked = _api(monkeypatch, tmp_path, {"shop": {MODE: "ambient"}, "mesh": {"team": "a"}})
    cfg = plugin.ambient
    assert enrollment(pod("shop", {"app": "web"}), cfg, plugin) == \
        (True, f"namespace shop (API labels): {MODE}=ambient")
    assert asked == ["http://api.invalid:6443/api/v1/namespaces/shop"]
    # With the API configured the config list is ignored: `mesh` is not labelled ambient there.
    assert not pod_enrolled(pod("mesh", {}), cfg, plugin)
    # The pod's own label needs no namespace lookup.
    asked.clear()
    assert not pod_enrolled(pod("shop", {MODE: "none"}), cfg, plugin)
    assert asked == []


def test_api_failure_is_a_cni_error_not_a_guess(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    plugin, _ = _api(monkeypatch, tmp_path, {})
    with pytest.raises(CniError, match="cannot get namespace gone from http://api.invalid:6443: HTTP 404"):
        pod_enrolled(pod("gone", {}), plugin.ambient, plugin)


def test_kubelet_uid_found_as_istio_cni_finds_it(tmp_path: Any) -> None:
    import os

    from meshnet.ambient.apply import kubelet_uid
    from meshnet.errors import SpecError

    def proc(pid: str, comm: str, cmdline: bytes) -> None:
        d = tmp_path / pid
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(cmdline)

    proc("10", "bash", b"bash\0")
    proc("11", "kubelite", b"/snap/bin/kubelite\0--no-such-flag\0")  # kubelite without 'kubelet' in argv: not it
    proc("12", "kubelet", b"/usr/bin/kubelet\0--config=/var/lib/kubelet/config.yaml\0")
    if os.geteuid() == 0:
        os.chown(tmp_path / "12", 4242, -1)
    assert kubelet_uid(str(tmp_path)) == str((tmp_path / "12").stat().st_uid)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(SpecError, match="no kubelet process found"):
        kubelet_uid(str(empty))
