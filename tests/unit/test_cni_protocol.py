"""meshnet-cni without a kernel: the CNI protocol, config validation, pod facts and skip rules.

The plugin's `run()` is driven in-process with explicit stdin/env (no namespace is touched: the
commands used here fail or finish before any namespace is opened).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from meshnet.cni.config import parse_config, runtime_annotations
from meshnet.cni.kube import load_kubeconfig
from meshnet.cni.plugin import run
from meshnet.cni.pod import PodInfo, pod_from_api, skip_reason
from meshnet.cni.protocol import (
    E_DECODE,
    E_INCOMPATIBLE_VERSION,
    E_INVALID_CONFIG,
    E_INVALID_ENV,
    E_INVALID_POD_SPEC,
    SUPPORTED_VERSIONS,
    CniError,
    parse_cni_args,
    passthrough_result,
)

ENV = {"CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/mn-does-not-exist", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}
STATUS = {"sidecar.istio.io/status": "{}"}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.3/24"}]}  # what a main plugin hands a chained one


def invoke(command: str, conf: Any, **env: str) -> tuple[int, dict[str, Any] | None]:
    raw = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    out = io.StringIO()
    code = run(io.BytesIO(raw), out, {**ENV, "CNI_COMMAND": command, **env})
    text = out.getvalue()
    return code, (json.loads(text) if text.strip() else None)


def conf(version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "meshnet-cni", **fields}


# ------------------------------------------------------------------------------ protocol
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_lists_every_supported_version(version: str) -> None:
    code, out = invoke("VERSION", {"cniVersion": version})
    assert code == 0
    assert out == {"cniVersion": version, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_version_with_empty_stdin_answers_latest() -> None:
    code, out = invoke("VERSION", b"")
    assert code == 0 and out is not None and out["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(("stdin", "env", "code", "words"), [
    (b"{not json", {}, E_DECODE, "not valid JSON"),
    (b"[1]", {}, E_DECODE, "JSON object"),
    (json.dumps(conf("0.2.0")).encode(), {}, E_INCOMPATIBLE_VERSION, "unsupported cniVersion"),
    (json.dumps({"name": "x"}).encode(), {}, E_INVALID_CONFIG, "no cniVersion"),
    (json.dumps(conf()).encode(), {"CNI_COMMAND": "ADDD"}, E_INVALID_ENV, "CNI_COMMAND"),
    (json.dumps(conf()).encode(), {"CNI_NETNS": ""}, E_INVALID_ENV, "CNI_NETNS"),
    (json.dumps(conf()).encode(), {"CNI_ARGS": "K8S_POD_NAME"}, E_INVALID_ENV, "CNI_ARGS"),
    (json.dumps(conf(backend="iptables-foo")).encode(), {}, E_INVALID_CONFIG, "backend"),
    (json.dumps(conf(exclude_namespaces="kube-system")).encode(), {}, E_INVALID_CONFIG, "exclude_namespaces"),
    (json.dumps(conf(defaults={"proxy_port": 70000})).encode(), {}, E_INVALID_CONFIG, "defaults.proxy_port"),
    (json.dumps(conf(defaults={"proxy_uid": True})).encode(), {}, E_INVALID_CONFIG, "defaults.proxy_uid"),
    (json.dumps(conf(log_level="loud")).encode(), {}, E_INVALID_CONFIG, "log_level"),
    (json.dumps(conf(prevResult=PREV, runtimeConfig={"io.kubernetes.cri.pod-annotations": ["x"]})).encode(), {},
     E_INVALID_CONFIG, "pod-annotations"),
    # A chained ADD needs the main plugin's result with the pod's addresses (CNI spec).
    (json.dumps(conf()).encode(), {}, E_INVALID_CONFIG, "needs prevResult"),
    (json.dumps(conf(prevResult={"cniVersion": "1.0.0"})).encode(), {}, E_INVALID_CONFIG, "no ips"),
    (json.dumps(conf(prevResult={"ips": []})).encode(), {}, E_INVALID_CONFIG, "no ips"),
    (json.dumps(conf(prevResult={"ips": [{"address": "10.0.0.2"}]})).encode(), {}, E_INVALID_CONFIG, "address"),
    (json.dumps(conf(prevResult={"ips": ["x" * 100000]})).encode(), {}, E_INVALID_CONFIG, "address"),
    # CNI_NETNS is an absolute path: a bare name is not looked up in /run/netns.
    (json.dumps(conf(prevResult=PREV)).encode(), {"CNI_NETNS": "mn-pod"}, E_INVALID_ENV, "absolute path"),
    (json.dumps(conf(prevResult=PREV)).encode(), {"CNI_NETNS": "x" * 100000}, E_INVALID_ENV, "absolute path"),
    # Nesting too deep for the decoder is a decode error, not an internal one (code 999).
    (b'{"cniVersion": "1.0.0", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", {}, E_DECODE, "not valid JSON"),
    (b"\xff\xfe\x00garbage", {}, E_DECODE, "not valid JSON"),
])
def test_bad_input_is_a_cni_error_object(stdin: bytes, env: dict[str, str], code: int, words: str) -> None:
    command = env.pop("CNI_COMMAND", "ADD")
    rc, out = invoke(command, stdin, **env)
    assert rc != 0
    assert out is not None and set(out) == {"cniVersion", "code", "msg", "details"}
    assert out["code"] == code, out
    assert words in out["msg"], out
    assert len(out["msg"]) < 300 and "\n" not in out["msg"], out  # never a 100 KB value echoed back
    assert out["cniVersion"] in SUPPORTED_VERSIONS


def test_error_object_carries_the_config_version() -> None:
    _, out = invoke("ADD", conf("0.4.0", backend="bogus"))
    assert out is not None and out["cniVersion"] == "0.4.0"


def test_check_is_refused_before_0_4_0() -> None:
    rc, out = invoke("CHECK", conf("0.3.1", prevResult={"cniVersion": "0.3.1"}))
    assert rc == 1 and out is not None and out["code"] == E_INCOMPATIBLE_VERSION


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_need_1_1_0(command: str) -> None:
    rc, out = invoke(command, conf("1.0.0"))
    assert rc == 1 and out is not None and out["code"] == E_INCOMPATIBLE_VERSION
    rc, out = invoke(command, conf("1.1.0"))
    assert (rc, out) == (0, None)


def test_add_of_a_skipped_pod_passes_prev_result_through_unchanged() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.1.2.3/24", "interface": 0}], "dns": {"nameservers": ["10.0.0.10"]}}
    # No sidecar status annotation: skipped before the (missing) namespace is even opened.
    rc, out = invoke("ADD", conf(prevResult=prev, runtimeConfig={"io.kubernetes.cri.pod-annotations": {}}))
    assert rc == 0 and out == prev


def test_add_of_an_excluded_namespace_is_skipped() -> None:
    rc, out = invoke("ADD", conf(prevResult=PREV, runtimeConfig={"io.kubernetes.cri.pod-annotations": STATUS}),
                     CNI_ARGS="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns")
    assert rc == 0 and out == PREV


def test_add_with_a_bad_mode_fails_before_touching_the_namespace() -> None:
    ann = {**STATUS, "sidecar.istio.io/interceptionMode": "BOGUS"}
    rc, out = invoke("ADD", conf(prevResult=PREV, runtimeConfig={"io.kubernetes.cri.pod-annotations": ann}))
    assert rc == 1 and out is not None and out["code"] == E_INVALID_POD_SPEC
    assert "BOGUS" in out["msg"]


def test_del_of_a_missing_namespace_succeeds_silently() -> None:
    assert invoke("DEL", conf()) == (0, None)
    assert invoke("DEL", conf(), CNI_NETNS="") == (0, None)


def test_passthrough_relabels_the_version_only() -> None:
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    assert passthrough_result({"prevResult": prev}, "0.4.0") == prev
    assert passthrough_result({}, "1.1.0") == {"cniVersion": "1.1.0"}


def test_cni_args() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;;") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a=b"}
    with pytest.raises(CniError):
        parse_cni_args("=x")


def test_installed_zipapp_answers_version(tmp_path: Any) -> None:
    from meshnet.cni.bundle import build

    plugin = build(tmp_path / "meshnet-cni")
    cp = subprocess.run([str(plugin)], input='{"cniVersion":"0.4.0"}', capture_output=True, text=True,
                        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    # A crash still yields an error object, not a traceback: garbage config on ADD.
    cp = subprocess.run([str(plugin)], input="{", capture_output=True, text=True, timeout=30,
                        env={**ENV, "CNI_COMMAND": "ADD", "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 1 and "Traceback" not in cp.stdout + cp.stderr
    assert json.loads(cp.stdout)["code"] == E_DECODE


def test_plugin_import_path_stays_light() -> None:
    """What ADD imports up to the applier call: no click, yaml, scapy, pyroute2, iptc."""
    code = ("import sys, meshnet.cni.plugin, meshnet.cni.commands, meshnet.cni.config, meshnet.apply.applier, "
            "meshnet.plan.istio_builder, meshnet.plan.render_restore, meshnet.state.parse_save, meshnet.state.compare;"
            "print(sorted(m for m in ('click','yaml','scapy','pyroute2','iptc','urllib.request','ssl') "
            "if m in sys.modules))")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ config
def test_config_defaults_and_unknown_fields() -> None:
    cfg = parse_config(conf(whatever={"x": 1}, ipam={}, dns={}))
    assert cfg.exclude_namespaces == ("kube-system",)
    assert (cfg.backend, cfg.log_level, cfg.kubeconfig) == ("auto", "info", "")
    assert cfg.defaults.proxy_port == 15001 and cfg.defaults.proxy_uid == 1337


def test_config_overrides() -> None:
    cfg = parse_config(conf(plugin_log_level="debug", exclude_namespaces=["a", "b"], backend="nftables",
                            defaults={"proxy_port": 15101, "inbound_capture_port": 15106, "proxy_uid": 2000,
                                      "proxy_gid": 2001}))
    assert cfg.log_level == "debug" and cfg.exclude_namespaces == ("a", "b") and cfg.backend == "nftables"
    d = cfg.defaults
    assert (d.proxy_port, d.inbound_capture_port, d.inbound_tunnel_port, d.proxy_uid, d.proxy_gid) == (
        15101, 15106, 15008, 2000, 2001)


def test_runtime_annotations() -> None:
    assert runtime_annotations(conf()) is None
    assert runtime_annotations(conf(runtimeConfig={"io.kubernetes.cri.pod-annotations": None})) == {}
    ann = {"a": "1"}
    assert runtime_annotations(conf(runtimeConfig={"io.kubernetes.cri.pod-annotations": ann})) == ann


# ------------------------------------------------------------------------------ skip rules
CFG = parse_config(conf())


def pod(**kw: Any) -> PodInfo:
    return PodInfo(**{"namespace": "default", "name": "web-0", "annotations": STATUS, **kw})


@pytest.mark.parametrize(("info", "reason"), [
    (pod(), None),
    (pod(namespace=""), "no Kubernetes pod arguments"),
    (pod(namespace="kube-system"), "excluded"),
    (pod(annotations={}), "no sidecar.istio.io/status"),
    (pod(annotations={**STATUS, "sidecar.istio.io/inject": "false"}), "annotation sidecar.istio.io/inject"),
    (pod(annotations={**STATUS, "sidecar.istio.io/inject": "no"}), None),  # not a Go bool: not 'false'
    (pod(annotations={**STATUS, "sidecar.istio.io/interceptionMode": "NONE"}), "mode NONE"),
    # The label wins over the annotation.
    (pod(labels={"sidecar.istio.io/inject": "true"},
         annotations={**STATUS, "sidecar.istio.io/inject": "false"}), None),
    (pod(labels={"sidecar.istio.io/inject": "F"}), "label sidecar.istio.io/inject"),
    (pod(containers_known=True, has_proxy=False), "no istio-proxy"),
    (pod(containers_known=True, has_proxy=True, has_init=True), "istio-init"),
    (pod(containers_known=True, has_proxy=True, proxy_env={"DISABLE_ENVOY": "true"}), "DISABLE_ENVOY"),
    (pod(containers_known=True, has_proxy=True, proxy_type="router"), "not a sidecar"),
])
def test_skip_rules(info: PodInfo, reason: str | None) -> None:
    got = skip_reason(info, CFG)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def api_pod(proxy: dict[str, Any] | None = None, inits: list[dict[str, Any]] | None = None,
            **meta: Any) -> dict[str, Any]:
    containers = [{"name": "app"}] + ([proxy] if proxy else [])
    return {"kind": "Pod", "metadata": {"annotations": STATUS, **meta},
            "spec": {"containers": containers, "initContainers": inits or []}}


def test_pod_from_api_reads_proxy_identity_and_env() -> None:
    proxy = {"name": "istio-proxy", "args": ["proxy", "sidecar"],
             "securityContext": {"runAsUser": 1000670000, "runAsGroup": 1000670001},
             "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"},
                     {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}
    info = pod_from_api(api_pod(proxy, labels={"app": "web"}), "default", "web-0")
    assert (info.proxy_uid, info.proxy_gid) == (1000670000, 1000670001)
    assert info.proxy_env == {"ISTIO_META_DNS_CAPTURE": "true"}
    assert info.labels == {"app": "web"} and info.has_proxy and not info.has_init
    assert skip_reason(info, CFG) is None


def test_pod_from_api_native_sidecar_and_root_proxy() -> None:
    proxy = {"name": "istio-proxy", "restartPolicy": "Always", "securityContext": {"runAsUser": 0}}
    info = pod_from_api(api_pod(None, inits=[proxy]), "default", "web-0")
    assert info.has_proxy and info.proxy_uid is None  # 0 means "use the default", as in Istio
    assert pod_from_api(api_pod(None, inits=[{"name": "istio-init"}]), "d", "p").has_init


def test_kubeconfig_json_token_and_inline_ca(tmp_path: Any) -> None:
    import base64

    (tmp_path / "token").write_text("s3cret\n")
    cfg = {"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443/",
                                                  "certificate-authority-data": base64.b64encode(b"PEM").decode()}}],
           "users": [{"name": "u", "user": {"tokenFile": "token"}}]}
    path = tmp_path / "kc.json"
    path.write_text(json.dumps(cfg))
    target = load_kubeconfig(str(path))
    assert (target.server, target.token, target.ca_data) == ("https://10.0.0.1:6443", "s3cret", b"PEM")


def test_kubeconfig_errors_are_invalid_config(tmp_path: Any) -> None:
    path = tmp_path / "kc"
    path.write_text("current-context: x\ncontexts: []\n")
    with pytest.raises(CniError) as info:
        load_kubeconfig(str(path))
    assert info.value.code == E_INVALID_CONFIG and "no context named 'x'" in info.value.msg
    with pytest.raises(CniError) as info:
        load_kubeconfig(str(tmp_path / "missing"))
    assert info.value.code == E_INVALID_CONFIG
