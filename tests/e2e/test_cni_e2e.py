"""meshnet-cni driven by a real runtime library (libcni via cnirun) in a real pod network.

Chain: Debian's `bridge` (isGateway false, host-local IPAM) then the meshnet-cni zipapp, run by
the system python3 exactly as a node would. Everything lives in `mn-` namespaces; the bridge is
inside a `node` namespace (see tests/harness/cni_helpers.py), never in the host's.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cni_helpers import (
    SIDECAR,
    CniNode,
    Pod,
    build_cnirun,
    build_plugin,
    concurrent,
    golden_restored,
    interception_state,
    normalise_save,
    save,
)
from harness.golden_cases import CNI_CASES, golden_path
from harness.topology import connect, is_root, start_server

from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns

ANN_CAPTURE_DNS = {"proxy.istio.io/config": '{"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"}}'}


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    return build_cnirun(), build_plugin(tmp_path_factory.mktemp("cni-bin")).parent


@pytest.fixture
def node(tools: tuple[Path, Path]) -> Iterator[CniNode]:
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}) as n:
        yield n


def log_records(node: CniNode) -> list[dict[str, Any]]:
    if not node.log_file.exists():
        return []
    return [json.loads(line) for line in node.log_file.read_text().splitlines()]


def nat_rules(node_pod_ns: Any) -> list[str]:
    return [ln for ln in save(node_pod_ns).splitlines() if ln.startswith("-A")]


# ------------------------------------------------------------------------------ lifecycle
def test_add_check_del_del(node: CniNode) -> None:
    pod = node.new_pod("web")
    add = node.add(pod, SIDECAR)
    assert add.ok, add.stderr
    result = add.result()
    # The bridge's result came through: our ADD passes prevResult on, labelled with the config's version.
    assert result["cniVersion"] == "1.0.0"
    assert [i["name"] for i in result["interfaces"]][0] == node.bridge
    assert pod.ip4.startswith(node.subnet.rsplit(".", 1)[0] + ".")
    assert pod.ip4 in pod.ns.run(["ip", "-4", "addr", "show", "eth0"]).stdout
    assert any("ISTIO_OUTPUT" in ln for ln in nat_rules(pod.ns))

    check = node.check(pod, SIDECAR)
    assert check.ok, check.stderr
    first_del = node.delete(pod, SIDECAR)
    assert first_del.ok, first_del.stderr
    assert interception_state(pod.ns) == []
    second_del = node.delete(pod, SIDECAR)
    assert second_del.ok, second_del.stderr
    assert [r["msg"] for r in log_records(node)] == ["interception programmed", "interception removed",
                                                       "interception removed"]


def test_add_is_idempotent(node: CniNode) -> None:
    pod = node.new_pod("web")
    assert node.add(pod, SIDECAR).ok
    rules = nat_rules(pod.ns)
    prev = {"cniVersion": "1.0.0", "ips": [{"address": f"{pod.ip4}/24"}]}
    again = node.plugin_only("ADD", pod, SIDECAR, prev=prev)
    assert again.ok, again.stdout
    assert again.result() == prev
    assert nat_rules(pod.ns) == rules  # nothing duplicated
    assert log_records(node)[-1]["changed"] is False


def _everything(ns: Netns) -> str:
    """All a plugin could change in a namespace: both families' rules, nft, policy routing."""
    cmds = (["iptables-nft-save"], ["ip6tables-nft-save"], ["nft", "list", "ruleset"], ["ip", "rule"],
            ["ip", "-6", "rule"], ["ip", "route", "show", "table", "all"], ["ip", "-6", "addr"])
    return "\n".join(line for c in cmds for line in ns.run(c).stdout.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize(("netns", "code", "words"), [
    ("{node}", 4, "plugin's own network namespace"),  # the node's namespace, by its /run/netns path
    ("/proc/self/ns/net", 4, "plugin's own network namespace"),
    ("{pod_name}", 4, "not an absolute path"),  # a bare name is not looked up in /run/netns
    ("/proc/self/ns/mnt", 4, "not a network namespace"),
    ("/etc/hostname", 4, "not a namespace file"),
    ("/run/netns/mn-no-such-pod", 3, "does not exist"),
])
def test_add_refuses_a_cni_netns_that_is_not_a_pods(node: CniNode, netns: str, code: int, words: str) -> None:
    pod = node.new_pod("own")
    before = _everything(node.node), _everything(pod.ns)
    path = netns.format(node=node.node.path, pod_name=pod.name)
    raw = node.plugin_only("ADD", pod, SIDECAR, prev={"cniVersion": "1.0.0"}, netns=path)
    err = json.loads(raw.stdout)
    assert raw.returncode == 1 and err["code"] == code and words in err["msg"], err
    # DEL: the plugin's own namespace and a bare name are refused too; a namespace that is gone or
    # a path that is no network namespace has nothing of ours to remove: success (the spec).
    out = node.plugin_only("DEL", pod, SIDECAR, netns=path)
    if "own" in words or "absolute" in words:
        assert out.returncode == 1 and json.loads(out.stdout)["code"] == code, out
    else:
        assert out.ok and out.stdout.strip() == "", out
    assert (_everything(node.node), _everything(pod.ns)) == before  # nothing applied anywhere


def test_add_needs_a_prev_result_with_ips(node: CniNode) -> None:
    pod = node.new_pod("noprev")
    before = _everything(pod.ns)
    for prev in (None, {"cniVersion": "1.0.0"}, {"cniVersion": "1.0.0", "ips": []}):
        raw = node.plugin_only("ADD", pod, SIDECAR) if prev is None else \
            node.plugin_only("ADD", pod, SIDECAR, prev={**prev, "ips": prev.get("ips", "missing")})
        err = json.loads(raw.stdout)
        assert raw.returncode == 1 and err["code"] == 7 and "prevResult" in err["msg"], err
    assert _everything(pod.ns) == before


def test_del_succeeds_when_the_namespace_is_gone(node: CniNode) -> None:
    pod = node.new_pod("gone")
    assert node.add(pod, SIDECAR).ok
    pod.ns.run(["true"])  # it exists now ...
    import subprocess

    subprocess.run(["ip", "netns", "del", pod.name], check=True, timeout=10)
    node.names.remove(pod.name)
    out = node.plugin_only("DEL", pod, SIDECAR)
    assert (out.returncode, out.stdout) == (0, ""), out
    assert log_records(node)[-1]["msg"] == "namespace already gone: nothing to remove"


# ------------------------------------------------------------------------------ real traffic
def test_outbound_and_inbound_traffic_is_intercepted(node: CniNode) -> None:
    app = node.new_pod("app")
    other = node.new_pod("other")  # no sidecar annotation: the plugin leaves it alone
    assert node.add(app, SIDECAR).ok
    assert node.add(other, {}).ok
    assert interception_state(other.ns) == []
    with contextlib.ExitStack() as servers:  # stopped by PID when the test ends
        servers.enter_context(start_server(app.ns, "outbound-proxy", tcp_ports=[15001], uid=1337, bind6=None))
        servers.enter_context(start_server(app.ns, "inbound-proxy", tcp_ports=[15006], uid=1337, bind6=None))
        servers.enter_context(start_server(other.ns, "other", tcp_ports=[8080], bind6=None))
        servers.enter_context(start_server(app.ns, "app", tcp_ports=[8080], bind6=None))
        _check_landings(node, app, other)


def _check_landings(node: CniNode, app: Pod, other: Pod) -> None:
    out = connect(app.ns, other.ip4, 8080)  # the app calls another pod on the bridge
    assert out.get("name") == "outbound-proxy", out
    assert out["orig_dst"] == [other.ip4, 8080]
    direct = connect(app.ns, other.ip4, 8080, uid=1337)  # the proxy's own traffic is not looped
    assert direct.get("name") == "other", direct
    inbound = connect(other.ns, app.ip4, 8080)  # another pod calls the app
    assert inbound.get("name") == "inbound-proxy", inbound
    assert inbound["orig_dst"] == [app.ip4, 8080]

    # meshnet-cni's DEL alone (the bridge's DEL would take eth0 away): traffic is direct again.
    assert node.plugin_only("DEL", app, SIDECAR).ok
    after = connect(app.ns, other.ip4, 8080)
    assert after.get("name") == "other", after


def test_ipv6_only_pod_gets_ip6tables_rules(tools: tuple[Path, Path]) -> None:
    """Istio's detection from the pod's own addresses: an IPv6-only pod is programmed for IPv6."""
    subnet = f"fd00:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::/64"
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}, subnet=subnet) as node:
        pod = node.new_pod("v6")
        add = node.add(pod, SIDECAR)
        assert add.ok, add.stderr
        assert ":" in pod.ip4
        assert "ISTIO_OUTPUT" in save(pod.ns, "ip6tables-nft-save")
        assert "inet6 ::6/128" in pod.ns.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
        assert node.check(pod, SIDECAR).ok
        assert node.delete(pod, SIDECAR).ok
        assert interception_state(pod.ns) == []
        assert "::6/128" not in pod.ns.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout


# ------------------------------------------------------------------------------ Istio's goldens
@pytest.mark.parametrize("case", sorted(CNI_CASES))
def test_annotations_reproduce_istio_cni_goldens(tools: tuple[Path, Path], case: str) -> None:
    """iptables-save of the pod == iptables-restore of Istio's golden in a fresh namespace."""
    facts = CNI_CASES[case]
    conf: dict[str, Any] = {"backend": "iptables-nft"}
    if "uid" in facts:  # via config defaults here; via the pod's securityContext in the API test
        conf["defaults"] = {"proxy_uid": facts["uid"], "proxy_gid": facts["gid"]}
    with CniNode(*tools, plugin_conf=conf) as node:
        pod = node.new_pod("golden")
        add = node.add(pod, {**SIDECAR, **facts["annotations"]})
        assert add.ok, add.stderr
        expected = golden_restored(golden_path("cni-plugin", case).read_text(), "nft")
        assert normalise_save(save(pod.ns)) == expected
        if case == "tproxy":
            assert "fwmark 0x539 lookup 133" in pod.ns.run(["ip", "rule"]).stdout
        assert node.check(pod, {**SIDECAR, **facts["annotations"]}).ok
        assert node.delete(pod).ok
        assert interception_state(pod.ns) == []


def test_legacy_backend_reproduces_the_basic_golden(tools: tuple[Path, Path]) -> None:
    with CniNode(*tools, plugin_conf={"backend": "iptables-legacy"}) as node:
        pod = node.new_pod("legacy")
        assert node.add(pod, SIDECAR).ok
        expected = golden_restored(golden_path("cni-plugin", "basic").read_text(), "legacy")
        assert normalise_save(save(pod.ns, "iptables-legacy-save")) == expected
        assert save(pod.ns, "iptables-nft-save").count("ISTIO") == 0
        assert node.delete(pod).ok
        assert interception_state(pod.ns) == []


# ------------------------------------------------------------------------------ CHECK and failures
def test_check_reports_a_hand_deleted_rule(node: CniNode) -> None:
    pod = node.new_pod("drift")
    assert node.add(pod, SIDECAR).ok
    pod.ns.run(["iptables-nft", "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"])
    check = node.check(pod, SIDECAR)
    assert not check.ok
    assert "interception rules differ" in check.stderr, check.stderr
    raw = node.plugin_only("CHECK", pod, SIDECAR, prev={"cniVersion": "1.0.0"})
    err = json.loads(raw.stdout)
    assert raw.returncode == 1 and err["code"] == 102
    assert "ISTIO_REDIRECT" in err["details"]  # the missing rule is named
    # ADD again (meshnet-cni alone: the bridge refuses a second eth0) puts the rules back.
    assert node.plugin_only("ADD", pod, SIDECAR, prev={"cniVersion": "1.0.0"}).ok
    assert node.check(pod, SIDECAR).ok


def test_check_reports_rules_with_other_annotations(node: CniNode) -> None:
    pod = node.new_pod("changed")
    assert node.add(pod, SIDECAR).ok
    check = node.check(pod, {**SIDECAR, "traffic.sidecar.istio.io/excludeOutboundPorts": "9999"})
    assert not check.ok and "interception rules differ" in check.stderr


@pytest.mark.parametrize(("annotation", "value", "named"), [
    ("traffic.sidecar.istio.io/excludeInboundPorts", "80,http", "excludeInboundPorts"),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/33", "includeOutboundIPRanges"),
    ("sidecar.istio.io/interceptionMode", "BRIDGE", "interceptionMode"),
    ("proxy.istio.io/config", '{"proxyMetadata": {"INVALID_DROP": "maybe"}}', "INVALID_DROP"),
    ("traffic.sidecar.istio.io/excludeInterfaces", "eth0;rm -rf /", "excludeInterfaces"),
])
def test_bad_annotation_fails_add_and_leaves_no_rules(node: CniNode, annotation: str, value: str,
                                                      named: str) -> None:
    pod = node.new_pod("bad")
    # A previous ADD left rules: a failed ADD must not leave them (nor half of new ones) behind.
    assert node.add(pod, SIDECAR).ok
    bad = {**SIDECAR, annotation: value}
    raw = node.plugin_only("ADD", pod, bad, prev={"cniVersion": "1.0.0"})
    assert raw.returncode == 1 and "Traceback" not in raw.stdout + raw.stderr
    err = json.loads(raw.stdout)
    assert err["code"] == 100 and named in err["msg"], err
    assert interception_state(pod.ns) == []
    fresh = node.new_pod("bad2")
    via_runtime = node.add(fresh, bad)
    assert not via_runtime.ok and named in via_runtime.stderr
    assert interception_state(fresh.ns) == []


@pytest.mark.parametrize(("k8s_namespace", "annotations"), [
    ("kube-system", SIDECAR),
    ("default", {}),
    ("default", {**SIDECAR, "sidecar.istio.io/interceptionMode": "NONE"}),
    ("default", {**SIDECAR, "sidecar.istio.io/inject": "false"}),
])
def test_skip_rules_leave_no_rules(node: CniNode, k8s_namespace: str, annotations: dict[str, str]) -> None:
    pod = node.new_pod("skip", k8s_namespace=k8s_namespace)
    add = node.add(pod, annotations)
    assert add.ok, add.stderr
    assert add.result()["ips"], "the main plugin's result must still come through"
    assert interception_state(pod.ns) == []
    assert node.check(pod, annotations).ok
    assert node.delete(pod, annotations).ok
    assert log_records(node)[0]["msg"] == "skipped"


# ------------------------------------------------------------------------------ Kubernetes API
class _PodApi(http.server.BaseHTTPRequestHandler):
    """Serves Pod JSON like the API server's GET /api/v1/namespaces/NS/pods/NAME (a local test
    stand-in for Kubernetes; it listens on 127.0.0.1 inside the test's node namespace)."""

    pods: dict[str, dict[str, Any]] = {}
    token = "test-token"
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"kind": "Status", "reason": "Unauthorized"})
        elif self.path in self.pods:
            self._send(200, self.pods[self.path])
        else:
            self._send(404, {"kind": "Status", "reason": "NotFound"})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(node: CniNode) -> Iterator[tuple[str, type[_PodApi]]]:
    # The socket is created inside the node namespace, where the plugin runs: 127.0.0.1 there.
    sock = node.node.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    handler = type("PodApi", (_PodApi,), {"pods": {}, "seen": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _kubeconfig(path: Path, server: str, token: str) -> None:
    # YAML on purpose: the zipapp carries PyYAML for it (the node's python3 may not have it).
    path.write_text(f"""apiVersion: v1
kind: Config
current-context: test
contexts:
- name: test
  context: {{cluster: test, user: cni}}
clusters:
- name: test
  cluster: {{server: "{server}"}}
users:
- name: cni
  user: {{token: {token}}}
""")


def _api_pod(annotations: dict[str, str], uid: int, gid: int, env: list[dict[str, str]]) -> dict[str, Any]:
    proxy = {"name": "istio-proxy", "args": ["proxy", "sidecar"], "env": env,
             "securityContext": {"runAsUser": uid, "runAsGroup": gid}}
    return {"kind": "Pod", "metadata": {"annotations": annotations, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app"}, proxy]}}


def test_kubeconfig_reads_the_pod_from_the_api(node: CniNode, api: tuple[str, type[_PodApi]]) -> None:
    url, handler = api
    kubeconfig = node.tmp / "kubeconfig"
    _kubeconfig(kubeconfig, url, handler.token)
    node.write_conflist(backend="iptables-nft", kubeconfig=str(kubeconfig))
    pod = node.new_pod("api", k8s_name="web-0")
    # The API says: custom proxy uid/gid and DNS capture from the proxy's env; the runtime passes
    # no annotations at all, so every fact below must have come from the API.
    handler.pods["/api/v1/namespaces/default/pods/web-0"] = _api_pod(
        SIDECAR, 1000670000, 1000670001, [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}])
    add = node.add(pod)
    assert add.ok, add.stderr
    assert handler.seen == ["/api/v1/namespaces/default/pods/web-0"]
    rules = save(pod.ns)
    assert "--uid-owner 1000670000" in rules and "--gid-owner 1000670001" in rules
    assert "--to-ports 15053" in rules
    assert node.check(pod).ok

    # The label wins over the annotation: inject=false as a label means no rules.
    skipped = node.new_pod("api-label", k8s_name="web-1")
    handler.pods["/api/v1/namespaces/default/pods/web-1"] = {
        **_api_pod(SIDECAR, 0, 0, []), "metadata": {"annotations": SIDECAR,
                                                    "labels": {"sidecar.istio.io/inject": "false"}}}
    assert node.add(skipped).ok
    assert interception_state(skipped.ns) == []


def test_kubeconfig_custom_uid_golden(node: CniNode, api: tuple[str, type[_PodApi]]) -> None:
    url, handler = api
    kubeconfig = node.tmp / "kubeconfig"
    _kubeconfig(kubeconfig, url, handler.token)
    node.write_conflist(backend="iptables-nft", kubeconfig=str(kubeconfig))
    pod = node.new_pod("uid", k8s_name="custom")
    facts = CNI_CASES["custom-uid"]
    handler.pods["/api/v1/namespaces/default/pods/custom"] = _api_pod(SIDECAR, facts["uid"], facts["gid"], [])
    assert node.add(pod).ok
    expected = golden_restored(golden_path("cni-plugin", "custom-uid").read_text(), "nft")
    assert normalise_save(save(pod.ns)) == expected


@pytest.mark.parametrize(("token", "k8s_name", "code", "words"), [
    ("test-token", "missing", 11, "HTTP 404"),  # the API has not caught up: the runtime retries
    ("wrong", "web-0", 7, "HTTP 401"),  # bad credentials will not fix themselves
])
def test_kubeconfig_failures_are_cni_errors(node: CniNode, api: tuple[str, type[_PodApi]], token: str,
                                            k8s_name: str, code: int, words: str) -> None:
    url, handler = api
    handler.pods["/api/v1/namespaces/default/pods/web-0"] = _api_pod(SIDECAR, 0, 0, [])
    kubeconfig = node.tmp / "kubeconfig"
    _kubeconfig(kubeconfig, url, token)
    node.write_conflist(backend="iptables-nft", kubeconfig=str(kubeconfig))
    pod = node.new_pod("fail", k8s_name=k8s_name)
    raw = node.plugin_only("ADD", pod, prev={"cniVersion": "1.0.0"})
    err = json.loads(raw.stdout)
    assert raw.returncode == 1 and err["code"] == code and words in err["msg"], err
    assert interception_state(pod.ns) == []


def test_unreachable_api_is_try_again(node: CniNode) -> None:
    kubeconfig = node.tmp / "kubeconfig"
    _kubeconfig(kubeconfig, "http://127.0.0.1:9", "t")  # nothing listens in the node namespace
    node.write_conflist(backend="iptables-nft", kubeconfig=str(kubeconfig), k8s_timeout=2)
    pod = node.new_pod("noapi")
    raw = node.plugin_only("ADD", pod, prev={"cniVersion": "1.0.0"})
    assert raw.returncode == 1 and json.loads(raw.stdout)["code"] == 11


# ------------------------------------------------------------------------------ scale and cost
@pytest.mark.slow
def test_fifty_pods_added_concurrently(node: CniNode) -> None:
    pods = [node.new_pod(f"p{i:02d}") for i in range(50)]
    outs = concurrent([node.argv("add", p, SIDECAR) for p in pods], node.env())
    failed = [(p.name, o.stderr) for p, o in zip(pods, outs, strict=True) if not o.ok]
    assert not failed, failed[:3]
    expected = golden_restored(golden_path("cni-plugin", "basic").read_text(), "nft")
    ips = set()
    for pod, out in zip(pods, outs, strict=True):
        ips.add(out.result()["ips"][0]["address"])
        assert normalise_save(save(pod.ns)) == expected, pod.name
    assert len(ips) == 50
    dels = concurrent([node.argv("del", p, SIDECAR) for p in pods], node.env())
    assert all(o.ok for o in dels), [o.stderr for o in dels if not o.ok][:3]
    assert all(interception_state(p.ns) == [] for p in pods)


def test_add_path_imports_nothing_heavy(node: CniNode) -> None:
    """The deployable's real ADD (REDIRECT) under -X importtime: no click, yaml, scapy, pyroute2."""
    pod = node.new_pod("cost")
    assert node.add(pod, {}).ok  # the bridge gives it an address; meshnet-cni skips it (no sidecar)
    out = node.plugin_only("ADD", pod, SIDECAR, prev={"cniVersion": "1.0.0"}, python_flags=["-X", "importtime"])
    assert out.ok, out.stdout + out.stderr
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "meshnet.apply.applier" in imported  # the measurement saw the real path
    heavy = {m for m in imported if m.split(".")[0] in ("click", "yaml", "scapy", "pyroute2", "iptc")}
    assert heavy == set()
    assert any("ISTIO_OUTPUT" in ln for ln in nat_rules(pod.ns))
