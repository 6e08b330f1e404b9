"""`meshnet explain --trace`: the kernel's own rule-by-rule path (nftrace) for the traffic-matrix
scenarios on iptables-nft and native nftables must equal the path `explain` predicts, and the
verdict must be where a real connection of the same kind lands. The trace leaves the namespace's
rules byte-identical, a table left by a SIGKILLed meshnet is removed by the next run, and
iptables-legacy is refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.topology import Topology, connect
from harness.traffic_helpers import (
    APP_PORT,
    APP_UID,
    DNS_PORT,
    EXCLUDED_INBOUND_PORT,
    INBOUND_PORT,
    OTHER_PEER_PORT,
    OUTBOUND_PORT,
    PEER_PORT,
    PROXY_UID,
    Lab,
    expect,
    istio_spec,
    resolv_conf_servers,
    traffic_lab,
)

from meshnet.apply.applier import apply_spec
from meshnet.diagnose.explain.packet import parse_packet
from meshnet.diagnose.explain.trace import TABLE_PREFIX, Trace, parse_events, trace_packet

pytestmark = [pytest.mark.netns]
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "meshnet.cli.main", "explain"]


@pytest.fixture(scope="module", params=["iptables-nft", "nftables"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with traffic_lab(request.param) as lab:
        yield lab


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def rules_text(lab: Lab) -> str:
    """Everything the trace could touch, without counters (real packets move those)."""
    out = [lab.pod.run(["nft", "-s", "list", "ruleset"]).stdout]
    for tool in ("iptables-nft-save", "ip6tables-nft-save"):
        out.append("\n".join(ln for ln in lab.pod.run([tool]).stdout.splitlines() if not ln.startswith("#")))
    return "\n".join(out)


def traced(lab: Lab, packet: str, verdict: str, port: int | None = None) -> None:
    before = rules_text(lab)
    explanations, traces, sent = trace_packet(lab.pod, parse_packet(packet))
    assert rules_text(lab) == before  # byte-identical: the trace table is gone
    assert "meshnet-trace" not in lab.pod.run(["nft", "list", "tables"]).stdout
    (ex,), (tr,) = explanations, traces
    assert tr.observed, (sent, tr.lines())
    assert tr.matches, "\n".join(ex.lines() + tr.lines())
    assert ex.verdict is not None and ex.verdict.kind == verdict, ex.lines()
    assert ex.verdict.port == port


@pytest.mark.parametrize("fam", [4, 6])
def test_outbound_and_proxy_uid(lab: Lab, fam: int) -> None:
    lab.apply(istio_spec())
    pod, peer = lab.ip("pod", fam), lab.ip("peer", fam)
    traced(lab, f"tcp {_ep(pod, 41000)} -> {_ep(peer, PEER_PORT)} out uid={APP_UID}", "redirect", OUTBOUND_PORT)
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "proxy", port=OUTBOUND_PORT, lab=lab)
    traced(lab, f"tcp {_ep(pod, 41001)} -> {_ep(peer, PEER_PORT)} out uid={PROXY_UID}", "pass")
    expect(connect(lab.pod, peer, PEER_PORT, uid=PROXY_UID), "peer", lab=lab)


@pytest.mark.parametrize("fam", [4, 6])
def test_inbound_and_excluded_port(lab: Lab, fam: int) -> None:
    lab.apply(istio_spec())
    pod, peer = lab.ip("pod", fam), lab.ip("peer", fam)
    traced(lab, f"tcp {_ep(peer, 42000)} -> {_ep(pod, APP_PORT)} in iface=eth0", "redirect", INBOUND_PORT)
    expect(connect(lab.peer, pod, APP_PORT), "proxy", port=INBOUND_PORT, lab=lab)
    traced(lab, f"tcp {_ep(peer, 42001)} -> {_ep(pod, EXCLUDED_INBOUND_PORT)} in iface=eth0", "pass")
    expect(connect(lab.peer, pod, EXCLUDED_INBOUND_PORT), "app", lab=lab)


def test_loopback_passthrough_and_proxy_to_own_ip(lab: Lab) -> None:
    """Over lo: Envoy's passthrough from 127.0.0.6 reaches the app; uid 1337 to the pod IP goes to 15006."""
    lab.apply(istio_spec())
    pod = lab.ip("pod")
    traced(lab, f"tcp 127.0.0.6:47000 -> {pod}:{APP_PORT} out uid={PROXY_UID}", "pass")
    expect(connect(lab.pod, pod, APP_PORT, uid=PROXY_UID, src_ip="127.0.0.6"), "app", port=APP_PORT, lab=lab)
    traced(lab, f"tcp {pod}:47001 -> {pod}:{APP_PORT} out uid={PROXY_UID}", "redirect", INBOUND_PORT)
    expect(connect(lab.pod, pod, APP_PORT, uid=PROXY_UID), "proxy", port=INBOUND_PORT, lab=lab)


def test_source_not_in_the_pod_is_one_line(lab: Lab) -> None:
    lab.apply(istio_spec())
    cp = _cli("--trace", f"tcp 10.9.9.9:47002 -> {lab.ip('peer')}:80 out uid=1000", "--netns", lab.pod.path)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "must be one of the pod's addresses" in cp.stderr
    assert "meshnet-trace" not in lab.pod.run(["nft", "list", "tables"]).stdout


@pytest.mark.parametrize("fam", [4, 6])
def test_tproxy_inbound(lab: Lab, fam: int) -> None:
    lab.apply(istio_spec("-m", "TPROXY"))
    pod, peer = lab.ip("pod", fam), lab.ip("peer", fam)
    traced(lab, f"tcp {_ep(peer, 43000)} -> {_ep(pod, APP_PORT)} in iface=eth0", "tproxy", INBOUND_PORT)
    expect(connect(lab.peer, pod, APP_PORT), "proxy", port=INBOUND_PORT, lab=lab)


@pytest.mark.parametrize("fam", [4, 6])
def test_excluded_cidr_and_port(lab: Lab, fam: int) -> None:
    pod, peer = lab.ip("pod", fam), lab.ip("peer", fam)
    lab.apply(istio_spec("-x", f"{peer}/{32 if fam == 4 else 128}"))
    traced(lab, f"tcp {_ep(pod, 44000)} -> {_ep(peer, PEER_PORT)} out uid={APP_UID}", "pass")
    expect(connect(lab.pod, peer, PEER_PORT, uid=APP_UID), "peer", lab=lab)
    lab.apply(istio_spec("-o", str(OTHER_PEER_PORT)))
    traced(lab, f"tcp {_ep(pod, 44001)} -> {_ep(peer, OTHER_PEER_PORT)} out uid={APP_UID}", "pass")
    expect(connect(lab.pod, peer, OTHER_PEER_PORT, uid=APP_UID), "peer", lab=lab)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_capture(lab: Lab, proto: str) -> None:
    lab.apply(istio_spec("--redirect-dns", dns_servers=resolv_conf_servers(lab.ip("peer", 4), lab.ip("peer", 6))))
    server = lab.ip("peer", 4)
    traced(lab, f"{proto} {lab.ip('pod')}:45000 -> {server}:53 out uid={APP_UID}", "redirect", DNS_PORT)
    expect(connect(lab.pod, server, 53, proto=proto, uid=APP_UID), "proxy", port=DNS_PORT, lab=lab)


# ----------------------------------------------------------------- lifecycle and refusals
@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_sigkilled_run_leaves_a_table_the_next_run_removes(topo: Topology) -> None:
    apply_spec(topo.pod, istio_spec(), backend="iptables-nft")
    pkt = f"tcp {topo.pod_ip4}:46000 -> {topo.peer_ip4}:80 out uid=1000"
    proc = subprocess.Popen([*CLI, "--trace", pkt, "--netns", topo.pod.path], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"{TABLE_PREFIX}{proc.pid}"
    try:
        deadline = time.monotonic() + 20
        while name not in topo.pod.run(["nft", "list", "tables"]).stdout:
            assert proc.poll() is None and time.monotonic() < deadline, "the trace table never appeared"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert name in topo.pod.run(["nft", "list", "tables"]).stdout  # left behind by the kill
    cp = _cli("--trace", pkt, "--netns", topo.pod.path, "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (result,) = json.loads(cp.stdout)["results"]
    assert result["trace"]["matches"] and result["verdict"]["kind"] == "redirect"
    assert f"removed a stale trace table: {name}" in result["trace"]["notes"]
    assert TABLE_PREFIX not in topo.pod.run(["nft", "list", "tables"]).stdout
    # its `nft monitor` died with it (PR_SET_PDEATHSIG): no process of the killed run is left
    left = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_iptables_legacy_cannot_be_traced(topo: Topology) -> None:
    apply_spec(topo.pod, istio_spec(), backend="iptables-legacy")
    cp = _cli("--trace", f"tcp {topo.pod_ip4}:46000 -> {topo.peer_ip4}:80 out uid=1000", "--netns", topo.pod.path)
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.count("\n") == 1 and "iptables-legacy rules cannot be traced" in cp.stderr
    assert "meshnet-trace" not in topo.pod.run(["nft", "list", "tables"]).stdout


def test_mismatch_is_a_finding() -> None:
    """A kernel path that is not the predicted one (canned monitor lines, as `nft -a monitor trace`
    prints them) is reported at the first differing hop."""
    lines = ["trace id 1a ip nat OUTPUT packet: oif \"eth0\" ip saddr 10.0.0.2 ip daddr 10.0.0.1",
             "trace id 1a ip nat OUTPUT rule counter packets 0 bytes 0 accept # handle 3 (verdict accept)",
             "trace id 1b ip nat OUTPUT rule counter jump ISTIO_OUTPUT # handle 4 (verdict jump ISTIO_OUTPUT)"]
    events, raw = parse_events(lines, "output")
    assert [(e[2], e[3]) for e in events] == [("OUTPUT", 3)] and len(raw) == 1  # only the first packet
    from meshnet.diagnose.explain.trace import Hop

    tr = Trace("iptables-nft", [Hop("nat", "OUTPUT", 2)], [Hop("nat", "OUTPUT", 1)], raw)
    assert not tr.matches
    assert any("finding trace-mismatch" in ln and "hop 1" in ln for ln in tr.lines())


def test_a_foreign_table_the_model_does_not_walk_is_a_mismatch(topo: Topology) -> None:
    """Another nat chain ahead of iptables-nft's (priority -110) redirects the proxy's own traffic: explain
    predicts Istio's RETURN, the kernel shows the foreign redirect and never reaches ISTIO_OUTPUT."""
    apply_spec(topo.pod, istio_spec(), backend="iptables-nft")
    topo.pod.run(["nft", "-f", "-"], input="table ip mn_foreign {\n chain out {\n  type nat hook output priority -110;"
                                          "\n  tcp dport 80 redirect to :15001\n }\n}\n")
    cp = _cli("--trace", f"tcp {topo.pod_ip4}:46100 -> {topo.peer_ip4}:80 out uid=1337", "--netns", topo.pod.path)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "finding trace-mismatch: the kernel also applied a rule explain does not model: ip mn_foreign out" \
        in cp.stdout
    assert "verdict: not intercepted" in cp.stdout  # the prediction, now shown to be wrong
