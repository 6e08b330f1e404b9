"""`meshnet repair --all` and the agent's repair loop on real containerd sandboxes (tests/harness/crinode).

The race: sandboxes created while meshnet-cni is not in the conflist (the plugin installed afterwards,
as after a node reboot or a DaemonSet upgrade) run without interception. Repair finds them over the
CRI, decides each pod as CNI ADD would and reconciles it in place: same sandbox, same pause process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.cni_helpers import normalise_save
from harness.cri_helpers import SIDECAR, CriNode, in_netns, save
from harness.topology import connect, is_root, start_server

from meshnet.apply.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]
OPT_OUT = {**SIDECAR, "sidecar.istio.io/inject": "false"}
BAD = {**SIDECAR, "traffic.sidecar.istio.io/excludeInboundPorts": "80,not-a-port"}
TPROXY = {**SIDECAR, "sidecar.istio.io/interceptionMode": "TPROXY"}


@pytest.fixture(scope="module")
def node() -> Iterator[CriNode]:
    if not is_root():
        pytest.skip("needs root (containerd, namespaces); CI runs as root")
    # The bridge alone first: the pods of the race are created before meshnet-cni is installed.
    with CriNode(chain_meshnet=False, import_image=False) as n:
        yield n


def _repair(node: CriNode, *extra: str) -> tuple[int, dict[str, Any]]:
    cp = subprocess.run([*MESHNET, "repair", "--all", "--cri", f"unix://{node.base}/run/containerd.sock",
                         "--conflist", str(node.conflist), "--json", *extra], capture_output=True, text=True,
                        timeout=300, cwd=REPO)
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp.returncode, json.loads(cp.stdout)


class _Rows(dict[str, dict[str, Any]]):
    """pod -> row; a missing pod fails with the whole document, to see what the CRI reported."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__((r["pod"], r) for r in doc["pods"])
        self.doc = doc

    def __missing__(self, key: str) -> dict[str, Any]:
        raise AssertionError(f"{key} not in the repair report: {json.dumps(self.doc)[-3000:]}")


def _rows(doc: dict[str, Any]) -> _Rows:
    return _Rows(doc)


def _istio(netns: str) -> str:
    """The pod's Istio rules (nft backend, IPv4: crinode pods are IPv4-only), comparable across pods."""
    return "".join(line + "\n" for line in normalise_save(save(netns)).splitlines() if "ISTIO" in line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pause_pid(node: CriNode, pod_id: str) -> int:
    return int(node.cri("inspect", pod_id).data["info"]["pid"])


@pytest.fixture(scope="module")
def race(node: CriNode) -> dict[str, dict[str, Any]]:
    """Pods started with the bridge alone, then meshnet-cni installed and containerd restarted."""
    pods = {
        "shop/web-0": node.run_pod("web-0", "shop", SIDECAR).data,
        "shop/tproxy-0": node.run_pod("tproxy-0", "shop", TPROXY).data,
        "kube-system/dns-0": node.run_pod("dns-0", "kube-system", SIDECAR).data,
        "jobs/batch-0": node.run_pod("batch-0", "jobs", {}).data,
        "shop/optout-0": node.run_pod("optout-0", "shop", OPT_OUT).data,
        "shop/bad-0": node.run_pod("bad-0", "shop", BAD).data,
    }
    for p in pods.values():
        p["pause_pid"] = _pause_pid(node, p["id"])
    node.write_conflist()  # the DaemonSet's installer chains meshnet-cni in
    node.restart()  # containerd reads the conflist at start; the sandboxes keep running
    assert node.plugins() == ["bridge", "meshnet-cni"]
    return pods


def test_dry_run_reports_and_changes_nothing(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    code, doc = _repair(node, "--dry-run")
    rows = _rows(doc)
    assert code == 1 and doc["dry_run"] is True
    assert rows["shop/web-0"]["action"] == "would-repair" and rows["shop/web-0"]["reason"] == "missing"
    assert rows["shop/bad-0"]["action"] == "invalid" and "not-a-port" in rows["shop/bad-0"]["detail"][0]
    for skipped in ("kube-system/dns-0", "jobs/batch-0", "shop/optout-0"):
        assert rows[skipped]["action"] == "skipped", rows[skipped]
    assert all(_istio(p["netns"]) == "" for p in race.values())


def test_race_repaired_in_place_like_cni_add(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    code, doc = _repair(node)
    rows = _rows(doc)
    assert rows["shop/web-0"]["action"] == "repaired" and rows["shop/web-0"]["reason"] == "missing"
    assert rows["shop/tproxy-0"]["action"] == "repaired"
    assert rows["shop/bad-0"]["action"] == "invalid"  # reported, not guessed
    assert code == 1  # the invalid pod still needs a human
    # Exactly what CNI ADD gives a pod with the same annotations, now that the plugin is installed.
    fresh = node.run_pod("web-1", "shop", SIDECAR).data
    assert _istio(race["shop/web-0"]["netns"]) == _istio(fresh["netns"]) != ""
    # Never restarted: same sandbox, same pause process.
    listed = {p["name"]: p["id"] for p in node.pods()}
    assert listed["web-0"] == race["shop/web-0"]["id"]
    assert _pause_pid(node, race["shop/web-0"]["id"]) == race["shop/web-0"]["pause_pid"]
    # Left alone: excluded namespace, no sidecar status, opted out, invalid.
    for untouched in ("kube-system/dns-0", "jobs/batch-0", "shop/optout-0", "shop/bad-0"):
        assert _istio(race[untouched]["netns"]) == "", untouched
    # TPROXY pods get their policy routing too.
    assert "lookup 133" in in_netns(race["shop/tproxy-0"]["netns"], ["ip", "rule"]).stdout
    # A second pass has nothing to do for the repaired pods.
    _, again = _repair(node)
    assert _rows(again)["shop/web-0"]["action"] == "ok" and _rows(again)["shop/tproxy-0"]["action"] == "ok"


def test_repaired_pod_traffic_is_intercepted(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    web, batch = race["shop/web-0"], race["jobs/batch-0"]
    web_ns, batch_ns = Netns.resolve(web["netns"]), Netns.resolve(batch["netns"])
    with start_server(web_ns, "inbound-proxy", tcp_ports=[15006], uid=1337, bind6=None), \
            start_server(web_ns, "outbound-proxy", tcp_ports=[15001], uid=1337, bind6=None), \
            start_server(batch_ns, "batch", tcp_ports=[8080], bind6=None):
        inbound = connect(batch_ns, web["ip"], 8080)  # an unmeshed pod calls the repaired one
        assert inbound.get("name") == "inbound-proxy" and inbound["orig_dst"] == [web["ip"], 8080], inbound
        outbound = connect(web_ns, batch["ip"], 8080)  # the repaired pod's app calls out
        assert outbound.get("name") == "outbound-proxy" and outbound["orig_dst"] == [batch["ip"], 8080], outbound


def test_drift_repaired_foreign_rules_kept_byte_for_byte(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    pod = node.run_pod("drift-0", "shop", SIDECAR).data
    ns = pod["netns"]
    want = _istio(ns)
    foreign = [["-t", "filter", "-A", "INPUT", "-p", "tcp", "-m", "tcp", "--tcp-flags", "ALL", "NONE", "-j", "DROP"],
               ["-t", "mangle", "-A", "FORWARD", "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN",
                "-j", "TCPMSS", "--clamp-mss-to-pmtu"],
               ["-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "someone else's \"rule\"",
                "-j", "RETURN"]]
    for rule in foreign:
        assert in_netns(ns, ["iptables-nft", *rule]).returncode == 0
    assert in_netns(ns, ["iptables-nft", "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"]).returncode == 0
    before = [ln for ln in normalise_save(save(ns)).splitlines() if "ISTIO" not in ln]
    code, doc = _repair(node)
    row = _rows(doc)["shop/drift-0"]
    assert row["action"] == "repaired" and row["reason"] == "drift", json.dumps(row)
    assert _istio(ns) == want
    assert [ln for ln in normalise_save(save(ns)).splitlines() if "ISTIO" not in ln] == before


def test_partial_state_is_repaired(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    pod = node.run_pod("half-0", "shop", TPROXY).data
    ns = pod["netns"]
    assert in_netns(ns, ["ip", "rule", "del", "fwmark", "1337", "lookup", "133"]).returncode == 0
    code, doc = _repair(node)
    row = _rows(doc)["shop/half-0"]
    assert row["action"] == "repaired" and row["reason"] == "partial", row
    assert "lookup 133" in in_netns(ns, ["ip", "rule"]).stdout


def test_at_most_n_repairs_per_pass(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    pods = [node.run_pod(f"limit-{i}", "shop", SIDECAR).data for i in range(3)]
    for p in pods:
        cp = subprocess.run([*MESHNET, "cleanup", "--netns", p["netns"], "-q"], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
        assert cp.returncode == 0, cp.stderr
    code, doc = _repair(node, "--max-repairs", "1")
    actions = sorted(_rows(doc)[f"shop/limit-{i}"]["action"] for i in range(3))
    assert actions == ["deferred", "deferred", "repaired"] and code == 1
    _, doc = _repair(node, "--max-repairs", "5")
    assert all(_rows(doc)[f"shop/limit-{i}"]["action"] in ("repaired", "ok") for i in range(3))
    assert all(_istio(p["netns"]) != "" for p in pods)


def test_a_pod_whose_lock_is_held_is_busy_not_touched(node: CriNode, race: dict[str, dict[str, Any]]) -> None:
    pod = node.run_pod("busy-0", "shop", SIDECAR).data
    ns = pod["netns"]
    assert subprocess.run([*MESHNET, "cleanup", "--netns", ns, "-q"], capture_output=True, cwd=REPO).returncode == 0
    fd = os.open(ns, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a CNI ADD/DEL in progress holds it
        code, doc = _repair(node)
        assert _rows(doc)["shop/busy-0"]["action"] == "busy" and code == 1
        assert _istio(ns) == ""
    finally:
        os.close(fd)
    _, doc = _repair(node)
    assert _rows(doc)["shop/busy-0"]["action"] == "repaired"


def test_repairs_racing_cni_add_and_del_never_leave_a_half_state(node: CriNode,
                                                                 race: dict[str, dict[str, Any]]) -> None:
    want = _istio(race["shop/web-0"]["netns"])
    stop = threading.Event()
    failures: list[str] = []

    def repair_loop() -> None:
        while not stop.is_set():
            cp = subprocess.run([*MESHNET, "repair", "--all", "--cri", f"unix://{node.base}/run/containerd.sock",
                                 "--conflist", str(node.conflist), "--json"], capture_output=True, text=True,
                                timeout=300, cwd=REPO)
            try:
                rows = json.loads(cp.stdout)["pods"]
            except ValueError:
                failures.append(f"unparsable: {cp.stdout[-300:]} {cp.stderr[-300:]}")
                continue
            failures.extend(f"{r['pod']}: {r['action']} {r['detail']}" for r in rows if r["action"] == "failed")

    loop = threading.Thread(target=repair_loop, daemon=True)
    loop.start()
    try:
        for i in range(50):
            pod = node.run_pod(f"churn-{i}", "shop", SIDECAR).data
            got = _istio(pod["netns"])
            assert got == want, f"iteration {i}: half state\n{got}"
            assert node.stop_pod(pod["id"]).ok and node.rm_pod(pod["id"]).ok
    finally:
        stop.set()
        loop.join(timeout=300)
    assert not failures, failures[:5]


def test_agent_repairs_within_one_interval_and_counts(node: CriNode, race: dict[str, dict[str, Any]],
                                                      tmp_path: Path) -> None:
    pod = node.run_pod("agent-0", "shop", SIDECAR).data
    assert subprocess.run([*MESHNET, "cleanup", "--netns", pod["netns"], "-q"], capture_output=True,
                          cwd=REPO).returncode == 0
    sock = tmp_path / "agent.sock"
    port = _free_port()
    agent = subprocess.Popen([*MESHNET, "cni", "agent", "--socket", str(sock), "--workers", "1", "--metrics-port",
                              f"127.0.0.1:{port}", "--doctor-interval", "0",
                              "--repair-interval", "1", "--cri", f"unix://{node.base}/run/containerd.sock",
                              "--repair-conflist", str(node.conflist)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 30
        while _istio(pod["netns"]) == "" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _istio(pod["netns"]) != "", "the agent did not repair the pod within 30 s"
        text = ""
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'meshnet_repairs_total{reason="missing"}' in text and \
                    'meshnet_repairs_total{reason="missing"} 0.0' not in text:
                break
            time.sleep(0.2)
        assert 'meshnet_repairs_total{reason="missing"} 0.0' not in text and \
            'meshnet_repairs_total{reason="missing"}' in text, text[-2000:]
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert "repair: shop/agent-0 repaired (missing)" in err, err[-2000:]
