"""`meshnet collect` + `doctor --bundle` / `conntrack analyze --bundle`: a broken pod is collected,
the pod is deleted, and the offline findings equal the live ones (real namespaces, real rules)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ct_scenarios import hold_server, install_redirect, readline, seq_client
from harness.tarfiles import member
from harness.topology import Topology, is_root
from harness.traffic_helpers import istio_spec

from meshnet.apply.applier import apply_spec
from meshnet.apply.netns import Netns

pytestmark = [pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]
PROXY_TCP = [15001, 15006, 15053]


def meshnet(*args: str, ok: tuple[int, ...] = (0, 1)) -> tuple[int, Any]:
    cp = subprocess.run([*MESHNET, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cp.returncode in ok, f"meshnet {' '.join(args)} -> {cp.returncode}: {cp.stderr}{cp.stdout}"
    assert "Traceback" not in cp.stderr
    out = cp.stdout
    return cp.returncode, json.loads(out) if out.lstrip().startswith(("{", "[")) else out


@pytest.fixture
def topo() -> Iterator[Topology]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    with Topology() as t:
        yield t


@pytest.fixture
def host() -> Iterator[Netns]:
    """A stand-in for the node's namespace, with one iptables-nft rule: an nft host."""
    with Topology(ipv6=False) as t:
        t.peer.run(["iptables-nft", "-A", "INPUT", "-s", "10.0.0.0/8", "-j", "ACCEPT"])
        yield t.peer


def proxy(t: Topology, transparent: bool = False) -> None:
    t.start_server(t.pod, "proxy", tcp_ports=PROXY_TCP, udp_ports=[15053], uid=1337, transparent=transparent)


def _healthy_nft(t: Topology) -> None:
    apply_spec(t.pod, istio_spec(), backend="nftables")
    proxy(t)


def _healthy_tproxy(t: Topology) -> None:
    apply_spec(t.pod, istio_spec("-m", "TPROXY"), backend="iptables-nft")
    proxy(t, transparent=True)


def _legacy_on_nft_host(t: Topology) -> None:
    apply_spec(t.pod, istio_spec(), backend="iptables-legacy")
    proxy(t)


def _tproxy_route_gone(t: Topology) -> None:
    _healthy_tproxy(t)
    t.pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "133"])


def _output_jump_gone(t: Topology) -> None:
    apply_spec(t.pod, istio_spec(), backend="iptables-nft")
    proxy(t)
    t.pod.run(["iptables-nft", "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])


def _no_proxy(t: Topology) -> None:
    apply_spec(t.pod, istio_spec(), backend="iptables-nft")


def _no_rules(t: Topology) -> None:
    proxy(t)


STATES: dict[str, tuple[Callable[[Topology], None], set[str]]] = {
    "healthy-nftables": (_healthy_nft, set()),
    "healthy-tproxy": (_healthy_tproxy, set()),
    "backend-mismatch": (_legacy_on_nft_host, {"backend-mismatch"}),
    "tproxy-routing-missing": (_tproxy_route_gone, {"tproxy-routing-missing"}),
    "outbound-not-captured": (_output_jump_gone, {"outbound-not-captured"}),
    "proxy-not-listening": (_no_proxy, {"proxy-not-listening"}),
    "no-interception-rules": (_no_rules, {"no-interception-rules"}),
}


_CT_TIMEOUT = re.compile(r"\b(tcp|udp|icmp) (\d+) \d+ ")


def steady(value: Any) -> Any:
    """Findings without conntrack's countdown timers, which tick between two reads of the same table."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k != "timeout"}
    if isinstance(value, list):
        return [steady(v) for v in value]
    if isinstance(value, str):
        return _CT_TIMEOUT.sub(r"\1 \2 T ", value)
    return value


def recorded_doctor(bundle: Path) -> dict[str, Any]:
    """What doctor found live while collecting (same reads as the bundle holds)."""
    with tarfile.open(bundle) as tar:
        (pod,) = json.load(member(tar, "manifest.json"))["pods"]
        doctor: dict[str, Any] = json.load(member(tar, f"{pod['dir']}/record.json"))["doctor"]
        return doctor


def _problems(report: dict[str, Any]) -> set[str]:
    return {f["kind"] for f in report["findings"] if f["severity"] != "info"}


@pytest.mark.parametrize("state", list(STATES))
def test_bundle_gives_the_live_findings_after_the_pod_is_gone(topo: Topology, host: Netns, tmp_path: Path,
                                                              state: str) -> None:
    build, expected = STATES[state]
    build(topo)
    pod = topo.pod.path
    code, live = meshnet("doctor", "--netns", pod, "--host-netns", host.path, "--json")
    assert _problems(live) == expected, live
    bundle = tmp_path / "bundle.tar.gz"
    meshnet("collect", "--netns", pod, "--host-netns", host.path, "-o", str(bundle), ok=(0,))
    assert bundle.stat().st_mode & 0o777 == 0o600
    topo.close()  # the pod is gone: everything below reads the bundle only
    assert not os.path.exists(pod)
    offline_code, offline = meshnet("doctor", "--bundle", str(bundle), "--json")
    assert offline["findings"] == recorded_doctor(bundle)["findings"]  # exactly what was seen while collecting
    assert steady(offline["findings"]) == steady(live["findings"])
    assert (offline_code, offline["backends"], offline["mode"]) == (code, live["backends"], live["mode"])
    assert code == (1 if expected else 0)


def test_bundle_holds_what_maintainers_ask_for(topo: Topology, tmp_path: Path) -> None:
    _legacy_on_nft_host(topo)
    topo.pod.run(["ip", "rule", "add", "fwmark", "0x77", "lookup", "177"])
    bundle = tmp_path / "b.tar.gz"
    meshnet("collect", "--netns", topo.pod.path, "-o", str(bundle), ok=(0,))
    with tarfile.open(bundle) as tar:
        manifest = json.load(member(tar, "manifest.json"))
        (pod,) = manifest["pods"]
        files = {n: member(tar, f"{pod['dir']}/{n}").read().decode() for n in pod["files"]}
    node = manifest["node"]
    assert node["kernel"] == os.uname().release and node["meshnet"] and "nf_tables" in node["iptables-nft"]
    assert "-A ISTIO_OUTPUT" in files["iptables-legacy-save-c.txt"] and "[0:0]" in files["iptables-legacy-save-c.txt"]
    assert "ip6tables-legacy-save-c.txt" in files and "iptables-nft-save-c.txt" in files
    assert json.loads(files["nft-j-list-ruleset.txt"])["nftables"]
    assert "fwmark 0x77 lookup 177" in files["ip-rule-v4.txt"]
    assert "local" in files["ip-route-v4.txt"] and "eth0" in files["ip-addr.txt"]
    assert ":15006" in files["ss-listening.txt"] and "users:" in files["ss-listening.txt"]
    assert "TcpExt:" in files["proc-net-netstat.txt"] and "Tcp:" in files["proc-net-snmp.txt"]
    assert "net.ipv4.tcp_early_demux = 1" in files["sysctls.txt"]
    assert "cpu=" in files["conntrack-stats.txt"]
    assert "conntrack-table.txt" in files


def test_collect_never_creates_legacy_tables(topo: Topology, tmp_path: Path) -> None:
    apply_spec(topo.pod, istio_spec(), backend="iptables-nft")
    before = topo.pod.read_proc_net("ip_tables_names") if _exists(topo.pod, "ip_tables_names") else ""
    meshnet("collect", "--netns", topo.pod.path, "-o", str(tmp_path / "b.tar.gz"), ok=(0,))
    after = topo.pod.read_proc_net("ip_tables_names") if _exists(topo.pod, "ip_tables_names") else ""
    assert before == after == ""
    for fam in ("ip_tables_names", "ip6_tables_names"):
        assert not _exists(topo.pod, fam) or topo.pod.read_proc_net(fam).strip() == ""


def _exists(ns: Netns, name: str) -> bool:
    try:
        ns.read_proc_net(name)
    except FileNotFoundError:
        return False
    return True


def test_conntrack_analyze_bundle_equals_live_on_a_real_collision(topo: Topology, tmp_path: Path) -> None:
    install_redirect(topo.pod)
    hold_server(topo)
    cli = seq_client(topo, 40000)
    for _ in range(2):
        assert json.loads(readline(cli, 10))["ok"]
    code, live = meshnet("conntrack", "analyze", "--netns", topo.pod.path, "--json")
    assert code == 1 and "tuple-collision" in {f["kind"] for f in live["findings"]}
    bundle = tmp_path / "ct.tar.gz"
    meshnet("collect", "--netns", topo.pod.path, "-o", str(bundle), ok=(0,))
    topo.close()
    offline_code, offline = meshnet("conntrack", "analyze", "--bundle", str(bundle), "--json")
    assert offline_code == code
    assert steady(offline["findings"]) == steady(live["findings"])
    assert offline["stats"]["nat_entries"] == live["stats"]["nat_entries"]
    _, doctor = meshnet("doctor", "--bundle", str(bundle), "--json")
    assert "tuple-collision" in {f["kind"] for f in doctor["findings"]}


def test_bad_bundles_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    for args in (["doctor", "--bundle", str(junk)], ["doctor", "--bundle", str(tmp_path / "none")],
                 ["conntrack", "analyze", "--bundle", str(junk)],
                 ["collect", "--netns", "/proc/self/ns/net", "-o", str(tmp_path / "no" / "dir.tar.gz")],
                 ["collect", "-o", str(tmp_path / "x.tar.gz")], ["doctor", "--bundle", str(junk), "--all"]):
        cp = subprocess.run([*MESHNET, *args], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert cp.returncode == 2, cp
        assert len(cp.stderr.strip().splitlines()) == 1 and "Traceback" not in cp.stderr
