"""The image's three pod-side roles under containerd's CRI, in the postures Kubernetes gives them.

Every container here is made with CreateContainer/StartContainer from localhost/meshnet:dev
(build/images/meshnet.tar) in a pod sandbox of the session's crinode node (tests/harness/cri_helpers.py):
* istio-init: uid 0, capabilities drop ALL + add NET_ADMIN/NET_RAW, no_new_privs, not privileged,
  Istio's injector args; then again (an init container restart); a TPROXY variant;
* istio-validation: uid/gid 1337, no capabilities at all, `--run-validation --skip-rule-apply`;
* a fake sidecar (uid 1337, a Python listener reading SO_ORIGINAL_DST) and an app container in the same
  pod, real TCP outbound from the app and inbound from a second pod;
* a debug container (NET_ADMIN + NET_RAW, what `kubectl debug --profile=netadmin` gives) running
  `meshnet doctor` and `meshnet status --json` with no target.
The pods carry no `sidecar.istio.io/status` annotation, so the node's meshnet-cni leaves them alone:
istio-init owns their rules, as in an Istio install without the CNI plugin.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness.cni_helpers import golden_restored, normalise_save
from harness.cri_helpers import IMAGE_TAR, ISTIO_INIT_ARGS, CriNode, in_netns, istio_lines, save
from harness.tarfiles import member

pytestmark = pytest.mark.netns

# Istio's istio-iptables output for the injector's args (REDIRECT, -i '*', -b '*', -d 15090,15021,15020,
# the default inbound tunnel port 15008, gid = uid 1337): ISTIO_INBOUND returns in -d's order.
INJECTOR_RULES = """\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"""
VALIDATION_ARGS = [*ISTIO_INIT_ARGS, "--run-validation", "--skip-rule-apply"]

# The fake sidecar: what Envoy's listeners see, answered on the connection itself.
SIDECAR_PY = r"""
import os, socket, struct, threading
def serve(port, tag):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        dport, dst = struct.unpack("!2xH4s8x", c.getsockopt(socket.SOL_IP, 80, 16))  # SO_ORIGINAL_DST
        c.sendall(f"{tag} orig={socket.inet_ntoa(dst)}:{dport} peer={peer[0]} uid={os.getuid()}\n".encode())
        c.close()
threading.Thread(target=serve, args=(15006, "inbound"), daemon=True).start()
serve(15001, "outbound")
"""
# A client that retries until the sidecar listens (bounded), then prints the sidecar's answer.
CLIENT_PY = r"""
import socket, sys, time
deadline = time.monotonic() + 60
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
            print(c.makefile().readline().strip(), flush=True)
            break
    except OSError as e:
        if time.monotonic() > deadline:
            print(f"failed: {e}", flush=True)
            sys.exit(1)
        time.sleep(0.2)
"""


def new_pod(node: CriNode, stem: str) -> dict[str, Any]:
    return node.run_pod(f"{stem}-{secrets.token_hex(3)}", "shop").data


@pytest.fixture
def pods(cri_node: CriNode) -> Iterator[list[dict[str, Any]]]:
    """Pods a test creates; stopped and removed after it (their containers with them)."""
    made: list[dict[str, Any]] = []
    yield made
    for pod in made:
        cri_node.stop_pod(pod["id"])
        cri_node.rm_pod(pod["id"])


def pod(node: CriNode, made: list[dict[str, Any]], stem: str) -> dict[str, Any]:
    p = new_pod(node, stem)
    made.append(p)
    return p


def init(node: CriNode, sandbox: dict[str, Any], args: list[str] = ISTIO_INIT_ARGS) -> dict[str, Any]:
    run = node.istio_init(sandbox["id"], args)
    assert run.ok and run.data["exit_code"] == 0, run.data
    return run.data


def full_save(netns: str) -> str:
    return "".join(normalise_save(save(netns, tool)) for tool in ("iptables-nft-save", "ip6tables-nft-save"))


# ------------------------------------------------------------------------------ the image itself
def test_image_holds_meshnet_and_the_netfilter_tools_but_no_compiler(cri_node: CriNode,
                                                                     pods: list[dict[str, Any]]) -> None:
    with tarfile.open(IMAGE_TAR) as t:
        manifest = json.load(member(t, "manifest.json"))
        config = json.load(member(t, manifest[0]["Config"]))
    assert manifest[0]["RepoTags"] == ["localhost/meshnet:dev"]
    # Entrypoint `meshnet`: the injector's args (`istio-iptables ...`) work with no command override.
    assert config["config"]["Entrypoint"] == ["meshnet"]
    # A second, independent reader of the docker-archive format (what `docker load` reads).
    skopeo = subprocess.run(["skopeo", "inspect", f"docker-archive:{IMAGE_TAR}"], capture_output=True, text=True,
                            timeout=60)
    assert skopeo.returncode == 0, skopeo.stderr
    inspected = json.loads(skopeo.stdout)
    assert len(inspected["Layers"]) == 2 and inspected["Os"] == "linux", inspected
    sandbox = pod(cri_node, pods, "image")
    script = ("set -e; for t in iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft nft ip conntrack "
              "nsenter python3 meshnet meshnet-cni; do command -v $t; done; iptables-legacy -V; iptables-nft -V; "
              "nft -v; conntrack -V; python3 -V; for c in gcc cc c++ clang tcc ld as make; do "
              "if command -v $c; then echo COMPILER $c; fi; done; meshnet --help >/dev/null; "
              "CNI_COMMAND=VERSION meshnet-cni </dev/null; echo; echo done")
    run = cri_node.container(sandbox["id"], ["/bin/sh", "-c", script], user=1337, group=1337)
    assert run.ok, run.data
    log = run.data["log"]
    assert "iptables v1.8.9 (legacy)" in log and "iptables v1.8.9 (nf_tables)" in log, log
    assert "nftables v1" in log and "conntrack v1" in log and "Python 3.11" in log, log
    assert "COMPILER" not in log and log.rstrip().endswith("done"), log
    version = json.loads(next(ln for ln in log.splitlines() if ln.startswith("{")))
    assert "1.0.0" in version["supportedVersions"], version


# ------------------------------------------------------------------------------ istio-init
def test_istio_init_with_the_injector_posture_installs_istio_rules_and_a_restart_changes_nothing(
        cri_node: CriNode, pods: list[dict[str, Any]]) -> None:
    sandbox = pod(cri_node, pods, "init")
    init(cri_node, sandbox)
    assert normalise_save(save(sandbox["netns"])) == golden_restored(INJECTOR_RULES, "nft")
    before = full_save(sandbox["netns"])
    nft_before = in_netns(sandbox["netns"], ["nft", "list", "ruleset"]).stdout
    again = init(cri_node, sandbox)  # kubelet restarts an init container that ran: same args, same pod
    assert full_save(sandbox["netns"]) == before
    assert in_netns(sandbox["netns"], ["nft", "list", "ruleset"]).stdout == nft_before
    assert "Traceback" not in again["log"]


def test_istio_init_tproxy_variant(cri_node: CriNode, pods: list[dict[str, Any]]) -> None:
    sandbox = pod(cri_node, pods, "tproxy")
    args = [a if a != "REDIRECT" else "TPROXY" for a in ISTIO_INIT_ARGS]
    init(cri_node, sandbox, args)
    mangle = save(sandbox["netns"])
    assert "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 " \
        "--tproxy-mark 0x539/0xffffffff" in mangle, mangle
    assert "fwmark 0x539 lookup 133" in in_netns(sandbox["netns"], ["ip", "rule"]).stdout
    assert "local default dev lo" in in_netns(sandbox["netns"], ["ip", "route", "show", "table", "133"]).stdout
    init(cri_node, sandbox, args)  # a restart again changes nothing
    assert save(sandbox["netns"]).count("-A ISTIO_TPROXY") == 1


# ------------------------------------------------------------------------------ istio-validation
def test_validation_container_as_1337_without_capabilities(cri_node: CriNode, pods: list[dict[str, Any]]) -> None:
    meshed = pod(cri_node, pods, "valid")
    init(cri_node, meshed)
    ok = cri_node.container(meshed["id"], ["meshnet", *VALIDATION_ARGS], user=1337, group=1337)
    assert ok.ok and ok.data["exit_code"] == 0, ok.data
    bare = pod(cri_node, pods, "unmeshed")  # the CNI race: rules never installed
    bad = cri_node.container(bare["id"], ["meshnet", *VALIDATION_ARGS], user=1337, group=1337)
    assert bad.data["exit_code"] == 126, bad.data
    assert "Traceback" not in bad.data["log"]
    assert istio_lines(bare["netns"]) == []  # validation never writes rules


# ------------------------------------------------------------------------------ traffic through a sidecar
def test_sidecar_and_app_in_one_pod_real_tcp_both_ways(cri_node: CriNode, pods: list[dict[str, Any]]) -> None:
    meshed = pod(cri_node, pods, "mesh")
    peer = pod(cri_node, pods, "peer")
    init(cri_node, meshed)
    start_sidecar(cri_node, meshed)
    # Outbound: the app (uid 1000) dials a pod-network address nobody has; the sidecar answers on 15001
    # (REDIRECT of a local packet: the source stays the pod's address, the routing chose it before NAT).
    target = meshed["ip"].rsplit(".", 1)[0] + ".250"
    app = cri_node.container(meshed["id"], ["python3", "-c", CLIENT_PY, target, "8080"], user=1000, group=1000)
    assert app.ok, app.data
    assert app.data["log"].strip() == f"outbound orig={target}:8080 peer={meshed['ip']} uid=1337", app.data
    # Inbound: another pod dials the meshed pod's port 9080; the sidecar answers on 15006.
    client = cri_node.container(peer["id"], ["python3", "-c", CLIENT_PY, meshed["ip"], "9080"], user=1000,
                                group=1000)
    assert client.ok, client.data
    assert client.data["log"].strip() == f"inbound orig={meshed['ip']}:9080 peer={peer['ip']} uid=1337", client.data
    # Excluded inbound port 15020 (-d) is not captured: nothing listens there, so the peer is refused.
    refused = cri_node.container(peer["id"], ["python3", "-c", "import socket,sys;socket.create_connection("
                                 f"('{meshed['ip']}', 15020), timeout=5)"], user=1000, group=1000)
    assert refused.data["exit_code"] == 1 and "ConnectionRefusedError" in refused.data["log"], refused.data


# ------------------------------------------------------------------------------ kubectl debug --profile=netadmin
def debug(node: CriNode, sandbox: dict[str, Any], *argv: str) -> dict[str, Any]:
    run = node.container(sandbox["id"], ["meshnet", *argv], user=0, group=0, caps=("NET_ADMIN", "NET_RAW"))
    assert run.data.get("exited"), run.data
    return run.data


def start_sidecar(node: CriNode, sandbox: dict[str, Any]) -> None:
    side = node.container(sandbox["id"], ["python3", "-c", SIDECAR_PY], user=1337, group=1337, detach=True)
    assert side.ok, side.data
    for _ in range(300):  # until both listeners are up (bounded: 30 s)
        listening = in_netns(sandbox["netns"], ["ss", "-Htln"]).stdout
        if ":15001 " in listening and ":15006 " in listening:
            return
        time.sleep(0.1)
    raise AssertionError(f"the fake sidecar did not listen: {listening}")


def test_debug_container_doctor_and_status_healthy_then_broken(cri_node: CriNode,
                                                               pods: list[dict[str, Any]]) -> None:
    sandbox = pod(cri_node, pods, "debug")
    init(cri_node, sandbox)
    start_sidecar(cri_node, sandbox)
    doctor = debug(cri_node, sandbox, "doctor")
    assert doctor["exit_code"] == 0, doctor
    assert doctor["log"].startswith("current: Istio rules in iptables-nft\n"), doctor
    assert "healthy: no findings" in doctor["log"] and "[critical]" not in doctor["log"], doctor
    status = debug(cri_node, sandbox, "status", "--json")
    assert status["exit_code"] == 0, status
    report = json.loads(status["log"])
    assert (report["namespace"], report["backends"], report["drift"]) == ("current", ["iptables-nft"], []), report
    # Broken: the rule that sends outbound traffic to the sidecar is gone (someone's hand-edit).
    cp = in_netns(sandbox["netns"], ["iptables-nft", "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"])
    assert cp.returncode == 0, cp.stderr
    broken = debug(cri_node, sandbox, "doctor")
    assert broken["exit_code"] == 1, broken
    assert "[critical] outbound-not-captured" in broken["log"], broken
    assert "iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT" in broken["log"], broken
    # Broken another way: a pod whose rules were never installed (the CNI race).
    bare = pod(cri_node, pods, "norules")
    doctor = debug(cri_node, bare, "doctor")
    assert doctor["exit_code"] == 1 and "[critical] no-interception-rules" in doctor["log"], doctor
    status = debug(cri_node, bare, "status", "--json")
    assert status["exit_code"] == 0 and json.loads(status["log"])["backends"] == [], status


def test_debug_container_without_capabilities_says_what_is_missing(cri_node: CriNode,
                                                                   pods: list[dict[str, Any]]) -> None:
    sandbox = pod(cri_node, pods, "nocap")
    init(cri_node, sandbox)
    run = cri_node.container(sandbox["id"], ["meshnet", "doctor"], user=0, group=0)
    assert run.data["exit_code"] == 2, run.data
    lines = run.data["log"].strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0], run.data

