"""`meshnet doctor --all`: every namespace of a (test) node in one table, worst exit code, each namespace
once however many ways it is reachable, a time bound per namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.topology import ServerHandle, Topology, is_root
from harness.traffic_helpers import istio_spec

from meshnet.apply.applier import apply_spec

pytestmark = [pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]


def doctor_all(*args: str) -> tuple[int, Any, str]:
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "doctor", "--all", *args], capture_output=True,
                        text=True, timeout=300, cwd=REPO)
    assert "Traceback" not in cp.stderr, cp.stderr
    data = json.loads(cp.stdout) if "--json" in args else cp.stdout
    return cp.returncode, data, cp.stderr


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Topology]]]:
    """A node directory with three pods: healthy (sidecar listening), broken (no proxy), plain (not meshed)."""
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    pods = {"healthy": Topology(ipv6=False), "broken": Topology(ipv6=False), "plain": Topology(ipv6=False)}
    try:
        for t in pods.values():
            t.start()
        apply_spec(pods["healthy"].pod, istio_spec(), backend="iptables-nft")
        pods["healthy"].start_server(pods["healthy"].pod, "proxy", tcp_ports=[15001, 15006], uid=1337)
        apply_spec(pods["broken"].pod, istio_spec(), backend="nftables")
        d = tmp_path / "netns"
        d.mkdir()
        for role, t in pods.items():
            (d / f"cni-{role}").symlink_to(t.pod.path)
        (d / "stale").write_text("")  # a leftover plain file: not a namespace, skipped
        yield d, pods
    finally:
        for t in pods.values():
            t.close()


def test_one_row_per_namespace_worst_exit(node: tuple[Path, dict[str, Topology]]) -> None:
    d, _ = node
    code, data, _ = doctor_all("--netns-dir", str(d), "--no-proc", "--json")
    rows = {os.path.basename(r["path"]): r for r in data["pods"]}
    assert set(rows) == {"cni-healthy", "cni-broken", "cni-plain"}
    assert code == data["exit"] == 1
    assert (rows["cni-healthy"]["exit"], rows["cni-healthy"]["worst"]) == (0, "healthy")
    assert rows["cni-healthy"]["backends"] == ["iptables-nft"] and rows["cni-healthy"]["mode"] == "REDIRECT"
    assert rows["cni-broken"]["exit"] == 1 and rows["cni-broken"]["worst"] == "critical proxy-not-listening"
    assert rows["cni-broken"]["backends"] == ["nftables"]
    assert rows["cni-plain"]["exit"] == 0 and rows["cni-plain"]["worst"].startswith("unmeshed")

    code, text, _ = doctor_all("--netns-dir", str(d), "--no-proc")
    lines = text.splitlines()
    assert lines[0].split() == ["POD", "NETNS", "BACKEND", "MODE", "WORST", "FINDING"]
    broken = next(ln for ln in lines if "cni-broken" in ln)
    assert broken.split()[2:5] == ["nftables", "REDIRECT", "critical"]
    assert lines[-1] == "3 namespace(s): 2 healthy, 1 with findings, 0 not inspected"


def test_a_namespace_reached_by_name_and_by_process_is_one_row(node: tuple[Path, dict[str, Topology]]) -> None:
    d, pods = node
    server = pods["healthy"]._procs[0]
    assert isinstance(server, ServerHandle)  # the fixture's first process is its landing server
    server_pid = server.pid
    _, data, _ = doctor_all("--netns-dir", str(d), "--json")
    paths = [r["path"] for r in data["pods"]]
    assert f"/proc/{server_pid}/ns/net" not in paths  # its namespace is already listed by name
    assert sum(os.path.dirname(p) == str(d) for p in paths) == 3
    host = os.stat("/proc/self/ns/net")
    assert all((os.stat(p).st_dev, os.stat(p).st_ino) != (host.st_dev, host.st_ino) for p in paths
               if os.path.exists(p))
    assert len({(os.stat(p).st_dev, os.stat(p).st_ino) for p in paths if os.path.exists(p)}) == \
        len([p for p in paths if os.path.exists(p)])


def test_a_namespace_over_its_time_bound_is_not_inspected(node: tuple[Path, dict[str, Topology]]) -> None:
    d, _ = node
    code, data, _ = doctor_all("--netns-dir", str(d), "--no-proc", "--pod-timeout", "0.001", "--json")
    assert code == 2
    assert {r["worst"] for r in data["pods"]} == {"could not inspect: timed out after 0.001s"}


def test_collect_all_then_doctor_bundle_gives_the_same_table(node: tuple[Path, dict[str, Topology]],
                                                              tmp_path: Path) -> None:
    d, pods = node
    _, live, _ = doctor_all("--netns-dir", str(d), "--no-proc", "--json")
    bundle = tmp_path / "node.tar.gz"
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "collect", "--all", "--netns-dir", str(d),
                         "--no-proc", "-o", str(bundle)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert cp.returncode == 0 and cp.stdout.strip() == f"{bundle}: 3 namespace(s)", cp.stderr
    for t in pods.values():
        t.close()
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "doctor", "--bundle", str(bundle), "--json"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
    offline = json.loads(cp.stdout)
    assert cp.returncode == live["exit"] == 1
    assert {r["netns"]: r["worst"] for r in offline["pods"]} == {r["netns"]: r["worst"] for r in live["pods"]}
    one = next(r["netns"] for r in live["pods"] if r["netns"].endswith("cni-broken"))
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "conntrack", "analyze", "--bundle", str(bundle)],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert cp.returncode == 2 and "choose one with --pod" in cp.stderr
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "conntrack", "analyze", "--bundle", str(bundle),
                         "--pod", one], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert cp.returncode == 0 and "REDIRECT sends all TCP ports" in cp.stdout  # from the recorded nft rules


def test_bad_arguments_are_one_line() -> None:
    for args in (["--netns", "x"], ["--jobs", "0"], ["--cri", "tcp://1.2.3.4:1"]):
        code, _, err = doctor_all(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
