"""CLI contract of apply / cleanup / status / validate / istio-iptables (real processes, real namespaces).

Exit codes: 0 ok, 1 failure (one line on stderr, never a traceback), 2 usage, 126 validation.
Also: 32 concurrent `istio-iptables --network-namespace` runs into 32 namespaces all succeed
(correctness, not timing: bench/apply.py times it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness.topology import Topology

from meshnet.apply.applier import status
from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns

ISTIO_INIT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
              "-d", "15090,15021,15020"]


def meshnet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(cp: subprocess.CompletedProcess[str], code: int) -> str:
    assert cp.returncode == code, (cp.returncode, cp.stdout, cp.stderr)
    assert "Traceback" not in cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    return lines[0]


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t


def test_apply_status_cleanup_roundtrip(topo: Topology) -> None:
    ns = topo.pod.label
    cp = meshnet("apply", "--netns", ns, *ISTIO_INIT)
    assert cp.returncode == 0 and "applied" in cp.stdout, cp.stderr
    again = meshnet("apply", "--netns", ns, *ISTIO_INIT)
    assert again.returncode == 0 and "no change" in again.stdout
    st = meshnet("status", "--netns", ns, *ISTIO_INIT, "--json")
    doc = json.loads(st.stdout)
    assert st.returncode == 0 and doc["in_sync"] and doc["backends"] == ["iptables-nft"], doc
    drifted = meshnet("status", "--netns", ns, *ISTIO_INIT[:-2], "--json")  # without -d: 3 rules differ
    assert drifted.returncode == 1 and len(json.loads(drifted.stdout)["drift"]) == 3  # IPv4-first pod: v4 only
    clean = meshnet("cleanup", "--netns", ns)
    assert clean.returncode == 0 and "ISTIO_OUTPUT" in clean.stdout
    assert status(topo.pod).backends == ()


def test_apply_by_pid_and_dry_run_changes_nothing(topo: Topology) -> None:
    proc = topo.spawn(topo.pod, ["sleep", "60"])
    cp = meshnet("apply", "--pid", str(proc.pid), *ISTIO_INIT, "--dry-run", "--backend", "nftables")
    assert cp.returncode == 0 and "add table inet istio-proxy-nat" in cp.stdout
    assert status(topo.pod).backends == ()
    cp = meshnet("apply", "--pid", str(proc.pid), *ISTIO_INIT, "--backend", "nftables")
    assert cp.returncode == 0, cp.stderr
    assert status(topo.pod).backends == ("nftables",)


def test_apply_from_spec_file(topo: Topology, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("inbound_ports_wildcard: true\noutbound_cidrs_wildcard: true\n")
    cp = meshnet("apply", "--netns", topo.pod.path, "-f", str(spec), "--backend", "iptables-legacy")
    assert cp.returncode == 0, cp.stderr
    assert status(topo.pod).backends == ("iptables-legacy",)


@pytest.mark.parametrize("args, code, needle", [
    (["apply", *ISTIO_INIT], 2, "missing target"),
    (["apply", "--netns", "mn-does-not-exist-0", *ISTIO_INIT], 1, "not found"),
    (["apply", "--netns", "{pod}", "--no-such-flag"], 2, "unrecognized"),
    (["apply", "--netns", "{pod}", "--backend", "bogus"], 2, "invalid choice"),
    (["apply", "--netns", "{pod}", "-i", "10.0.0.0/33"], 1, "--istio-service-cidr"),
    (["apply", "--netns", "{pod}", "-f", "/nonexistent.yaml"], 1, "nonexistent"),
    (["apply", "--netns", "{pod}", "--pid", "1"], 2, "not both"),
    (["cleanup"], 2, "missing target"),
    (["status", "--pid", "999999999"], 2, "not found"),  # diagnostic: could not inspect
    (["validate", "--netns", "{pod}", "--timeout", "soon"], 1, "duration"),
])
def test_bad_input_is_one_line(topo: Topology, args: list[str], code: int, needle: str) -> None:
    line = one_line_error(meshnet(*[a.replace("{pod}", topo.pod.label) for a in args]), code)
    assert needle in line, line
    assert status(topo.pod).backends == ()  # nothing half-applied


@pytest.mark.parametrize("command", ("apply", "cleanup"))
def test_writing_commands_refuse_the_callers_own_namespace(command: str) -> None:
    """`--pid <self>` is the test runner's (the host's) namespace: refused before anything is written."""
    import os

    line = one_line_error(meshnet(command, "--pid", str(os.getpid()), *(ISTIO_INIT if command == "apply" else [])), 2)
    assert "refusing" in line


def test_drift_is_exit_1_with_the_difference(topo: Topology) -> None:
    ns = topo.pod.label
    assert meshnet("apply", "--netns", ns, *ISTIO_INIT).returncode == 0
    line = one_line_error(meshnet("apply", "--netns", ns, *ISTIO_INIT, "-p", "15009"), 1)
    assert "15009" in line and "--reconcile" in line
    assert meshnet("apply", "--netns", ns, *ISTIO_INIT, "-p", "15009", "--reconcile").returncode == 0


def test_validate_passes_with_rules_and_fails_126_without(topo: Topology) -> None:
    ns = topo.pod.label
    line = one_line_error(meshnet("validate", "--netns", ns, "--timeout", "1s"), 126)
    assert "iptables validation failed" in line
    assert meshnet("apply", "--netns", ns, *ISTIO_INIT).returncode == 0
    ok = meshnet("validate", "--netns", ns, "--timeout", "5s")
    assert ok.returncode == 0 and "127.0.0.6:15002" in ok.stdout, ok.stderr


def test_validate_fails_when_probe_port_lands_elsewhere(topo: Topology) -> None:
    """Rules that send the probe somewhere else (here: not redirected at all) must not pass."""
    ns = topo.pod.label
    assert meshnet("apply", "--netns", ns, *ISTIO_INIT, "-u", "4242").returncode == 0  # uid 1337 not the proxy
    one_line_error(meshnet("validate", "--netns", ns, "--timeout", "1s"), 126)


def test_istio_iptables_applies_reruns_validates_and_cleans(topo: Topology) -> None:
    ns = topo.pod.label
    base = ["istio-iptables", "--network-namespace", ns, *ISTIO_INIT]
    first = meshnet(*base)
    assert first.returncode == 0, first.stderr
    assert meshnet(*base).returncode == 0  # re-run (container restart): no-op, not #38036's failure
    one_line_error(meshnet(*base, "-p", "15009"), 1)
    assert meshnet(*base, "-p", "15009", "--reconcile").returncode == 0
    assert meshnet("istio-iptables", "--network-namespace", ns, "--run-validation", "--skip-rule-apply",
                   "-p", "15009").returncode == 0
    one_line_error(meshnet(*base, "--force-apply"), 1)
    assert meshnet("istio-iptables", "--network-namespace", ns, "--cleanup-only").returncode == 0
    assert status(topo.pod).backends == ()
    one_line_error(meshnet("istio-iptables", "--network-namespace", ns, "--run-validation",
                           "--skip-rule-apply", "--probe-timeout", "500ms"), 126)


@pytest.mark.parametrize("flag, backend", [("--native-nftables", "nftables"),
                                           ("--force-iptables-binary=legacy", "iptables-legacy")])
def test_istio_iptables_backend_flags(topo: Topology, flag: str, backend: str) -> None:
    cp = meshnet("istio-iptables", "--network-namespace", topo.pod.label, *ISTIO_INIT, flag)
    assert cp.returncode == 0, cp.stderr
    assert status(topo.pod).backends == (backend,)


def test_istio_iptables_bad_forced_binary(topo: Topology) -> None:
    one_line_error(meshnet("istio-iptables", "--network-namespace", topo.pod.label, *ISTIO_INIT,
                           "--force-iptables-binary", "both"), 1)


@pytest.mark.slow
@pytest.mark.parametrize("extra", ([], ["--force-iptables-binary", "legacy"]), ids=("nft", "legacy"))
def test_32_concurrent_applies_into_32_namespaces(extra: list[str]) -> None:
    topos = [Topology(ipv6=i % 2 == 0) for i in range(32)]
    try:
        for t in topos:
            t.start()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(
                lambda t: meshnet("istio-iptables", "--network-namespace", t.pod.label, *ISTIO_INIT, *extra,
                                  timeout=120), topos))
        failures = [(t.pod.label, cp.returncode, cp.stderr) for t, cp in zip(topos, results, strict=True)
                    if cp.returncode != 0]
        assert failures == []
        from meshnet.apply.applier import spec_for_netns
        from meshnet.spec.flags import parse_istio_args

        for t in topos:
            spec = spec_for_netns(parse_istio_args(ISTIO_INIT, {})[0], t.pod)
            st = status(t.pod, spec)
            assert st.drift == () and len(st.backends) == 1, (t.pod.label, st)
    finally:
        for t in topos:
            t.close()


def test_istio_iptables_never_touches_the_callers_namespace() -> None:
    """Without --network-namespace it targets the current namespace: run it under nsenter only."""
    with Topology() as t:
        me = Netns.resolve()
        before = me.inode
        cp = subprocess.run(t.pod.argv([sys.executable, "-m", "meshnet.cli.main", "istio-iptables", *ISTIO_INIT]),
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        assert status(t.pod).backends == ("iptables-nft",)
        assert Netns.resolve().inode == before
