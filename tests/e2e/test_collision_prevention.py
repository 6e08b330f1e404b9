"""--prevent-tuple-collision: the decision, the readers, and the sysctl in real pod namespaces.

The hang itself only happens on kernels < 6.7: `make test-vm` runs tests/vm/collision_prevention_guest.py
in a 6.1 VM. Here the same script runs on this machine's kernel, where `auto` must do nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cni_helpers import SIDECAR, CniNode, build_cnirun, build_plugin
from harness.topology import Topology, is_root

from meshnet.apply import collision_prevention as cp
from meshnet.diagnose.checks import Context, Finding
from meshnet.diagnose.checks import collision_prevention as check
from meshnet.diagnose.conntrack.netlink import TableScan
from meshnet.diagnose.conntrack.rules import analyze_iptables
from meshnet.diagnose.conntrack.snapshot import Snapshot
from meshnet.errors import SpecError
from meshnet.spec.annotations import spec_from_annotations
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.spec import Spec
from meshnet.spec.yaml_file import spec_from_mapping

REPO = Path(__file__).resolve().parents[2]
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]
FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*",
         "-d", "15090,15021,15020"]
ON_FIXED_KERNEL = not cp.kernel_hangs()

# ------------------------------------------------------------------ the decision (no kernel needed)
REDIRECT_ALL = Spec(inbound_ports_wildcard=True)


@pytest.mark.parametrize(("release", "version"), [("6.1.0-56-amd64", (6, 1)), ("6.18.44-fc-v657", (6, 18)),
                                                  ("5.15.0", (5, 15)), ("6.7", (6, 7)), ("weird", None)])
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert cp.kernel_version(release) == version


@pytest.mark.parametrize(("spec", "release", "off"), [
    (REDIRECT_ALL, "6.1.0-56-amd64", True),                       # the 503 UF kernel: auto acts
    (REDIRECT_ALL, "6.6.30", True),
    (REDIRECT_ALL, "6.7.0", False),                               # fixed upstream: auto never acts
    (REDIRECT_ALL, "6.18.44", False),
    (REDIRECT_ALL, "unknown", True),                              # unknown kernels count as affected
    (Spec(inbound_ports=(8080,)), "6.1.0", False),                # one port: nothing can collide
    (Spec(inbound_ports=(8080, 9080)), "6.1.0", True),
    (Spec(), "6.1.0", False),                                     # no inbound capture
    (Spec(inbound_ports_wildcard=True, mode="TPROXY"), "6.1.0", False),
    (Spec(inbound_ports_wildcard=True, prevent_tuple_collision="off"), "6.1.0", False),
    (Spec(inbound_ports=(8080,), prevent_tuple_collision="early-demux"), "6.18.0", True),  # always
])
def test_when_early_demux_goes_off(spec: Spec, release: str, off: bool) -> None:
    assert cp.wants_early_demux_off(spec, release) is off


def test_every_reader_takes_the_choice_and_tproxy_switches_the_mode() -> None:
    spec, _ = parse_istio_args([*FLAGS, "--prevent-tuple-collision", "early-demux"], env={})
    assert (spec.prevent_tuple_collision, spec.mode) == ("early-demux", "REDIRECT")
    spec, _ = parse_istio_args(FLAGS, env={"PREVENT_TUPLE_COLLISION": "tproxy"})
    assert (spec.prevent_tuple_collision, spec.mode) == ("tproxy", "TPROXY")
    assert parse_istio_args(FLAGS, env={})[0].prevent_tuple_collision == "auto"
    yaml_spec = spec_from_mapping({"inbound_ports": "*", "prevent_tuple_collision": "tproxy"})
    assert (yaml_spec.prevent_tuple_collision, yaml_spec.mode) == ("tproxy", "TPROXY")
    pod = spec_from_annotations({"meshnet.io/prevent-tuple-collision": "off"})
    assert pod.prevent_tuple_collision == "off"
    with pytest.raises(SpecError, match="prevent-tuple-collision"):
        spec_from_annotations({"meshnet.io/prevent-tuple-collision": "sometimes"})
    with pytest.raises(SpecError, match="needs inbound interception mode TPROXY"):
        Spec(prevent_tuple_collision="tproxy")


def test_the_choice_never_changes_istios_rules() -> None:
    base = subprocess.run([*MESHNET, "istio-iptables", "-n", *FLAGS], capture_output=True, text=True, check=True)
    for choice in ("auto", "off", "early-demux"):
        with_choice = subprocess.run([*MESHNET, "istio-iptables", "-n", *FLAGS, f"--prevent-tuple-collision={choice}"],
                                     capture_output=True, text=True, check=True)
        assert with_choice.stdout == base.stdout


def test_a_bad_choice_is_one_line_and_exit_1() -> None:
    res = subprocess.run([*MESHNET, "istio-iptables", "-n", *FLAGS, "--prevent-tuple-collision", "maybe"],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "expected one of auto, off, early-demux, tproxy" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ doctor's recommendation (kernel injected)
ISTIO_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
"""


class _Here:
    """The caller's own namespace, standing in for a pod in these unit tests (nothing is written)."""

    label = "pod"

    @staticmethod
    def is_current() -> bool:
        return True


def _findings(kernel: str, demux: int, writable: bool, monkeypatch: pytest.MonkeyPatch) -> list[Finding]:
    snap = Snapshot(source="test", scan=TableScan(), kernel=kernel, early_demux=demux,
                    rules=analyze_iptables(ISTIO_NAT))
    monkeypatch.setattr(check, "_writable", lambda ctx: writable)
    monkeypatch.setattr(check, "recorded_value", lambda ns: 1)
    # ignore: _Here stands in for a Netns (label and is_current are all the check reads)
    return check.run(Context(_Here(), None, conntrack=snap))  # type: ignore[arg-type]


def test_doctor_recommends_what_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    [node] = _findings("6.1.0-56-amd64", 1, True, monkeypatch)
    assert (node.kind, node.severity) == ("collision-prevention", "warning")
    assert "--prevent-tuple-collision=early-demux" in node.fix
    [pod] = _findings("6.1.0-56-amd64", 1, False, monkeypatch)
    assert "securityContext.sysctls" in pod.fix and "--allowed-unsafe-sysctls" in pod.fix
    [done] = _findings("6.1.0-56-amd64", 0, False, monkeypatch)
    assert done.severity == "info" and "in place" in done.summary and "set by meshnet" in done.summary
    [fixed] = _findings("6.18.44", 1, True, monkeypatch)
    assert fixed.severity == "info" and "no prevention needed" in fixed.summary


# ------------------------------------------------------------------ real namespaces


def _demux(ns_name: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", ns_name, "cat", "/proc/sys/net/ipv4/tcp_early_demux"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.mark.netns
def test_the_collision_scenarios_on_this_kernel() -> None:
    """Real traffic: without prevention, with auto, with TPROXY (the VM tier runs the same on 6.1)."""
    res = subprocess.run([sys.executable, str(REPO / "tests/vm/collision_prevention_guest.py")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLLISION_TRIES": "10"})
    assert res.returncode == 0, res.stdout + res.stderr
    if ON_FIXED_KERNEL:
        assert "CHECK auto:does-nothing-on-fixed-kernel PASS" in res.stdout
        assert "CHECK off:second-connect-remapped PASS" in res.stdout
    assert "CHECK tproxy:10-tries-never-hang PASS" in res.stdout


@pytest.mark.netns
def test_explicit_early_demux_is_set_and_restored_exactly(topology: Topology) -> None:
    pod = topology.pod.label
    assert _demux(pod) == 1
    out = subprocess.run([*MESHNET, "apply", "--netns", pod, *FLAGS, "--prevent-tuple-collision=early-demux"],
                         capture_output=True, text=True, check=True).stdout
    assert "set net.ipv4.tcp_early_demux=0" in out and _demux(pod) == 0
    assert cp.recorded_value(topology.pod) == 1
    host = int(Path("/proc/sys/net/ipv4/tcp_early_demux").read_text())
    again = subprocess.run([*MESHNET, "apply", "--netns", pod, *FLAGS, "--prevent-tuple-collision=early-demux"],
                           capture_output=True, text=True, check=True).stdout
    assert "already 0" in again
    out = subprocess.run([*MESHNET, "cleanup", "--netns", pod], capture_output=True, text=True, check=True).stdout
    assert "restored net.ipv4.tcp_early_demux=1" in out
    assert _demux(pod) == 1 and cp.recorded_value(topology.pod) is None
    assert int(Path("/proc/sys/net/ipv4/tcp_early_demux").read_text()) == host


@pytest.mark.netns
def test_cleanup_leaves_a_value_meshnet_did_not_set(topology: Topology) -> None:
    pod = topology.pod.label
    subprocess.run(["ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.tcp_early_demux=0"], check=True)
    subprocess.run([*MESHNET, "apply", "--netns", pod, *FLAGS, "--prevent-tuple-collision=early-demux"],
                   capture_output=True, text=True, check=True)
    assert cp.recorded_value(topology.pod) is None  # it was 0 already: nothing of ours to record
    subprocess.run([*MESHNET, "cleanup", "--netns", pod], capture_output=True, text=True, check=True)
    assert _demux(pod) == 0


@pytest.mark.netns
def test_istio_init_with_read_only_proc_sys_warns_and_still_applies(topology: Topology) -> None:
    """As in a container: /proc/sys read-only. The rules go in, one warning names the alternatives."""
    pod = topology.pod.label
    script = ("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
              f"exec ip netns exec {pod} \"$@\"")
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *MESHNET,
                          "istio-iptables", *FLAGS, "--prevent-tuple-collision=early-demux"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "read-only /proc/sys" in warnings[0]
    assert "securityContext.sysctls" in warnings[0] and "TPROXY" in warnings[0]
    assert _demux(pod) == 1
    save = subprocess.run(["ip", "netns", "exec", pod, "iptables-save", "-t", "nat"], capture_output=True,
                          text=True, check=True).stdout
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in save


@pytest.mark.netns
def test_doctor_on_this_kernel_says_no_prevention_needed(topology: Topology) -> None:
    pod = topology.pod.label
    subprocess.run([*MESHNET, "apply", "--netns", pod, *FLAGS], capture_output=True, text=True, check=True)
    res = subprocess.run([*MESHNET, "doctor", "--netns", pod, "--json"], capture_output=True, text=True)
    kinds = {f["kind"]: f for f in json.loads(res.stdout)["findings"]}
    if ON_FIXED_KERNEL:
        assert kinds["collision-prevention"]["severity"] == "info"
        assert "no prevention needed" in kinds["collision-prevention"]["summary"]


@pytest.fixture(scope="module")
def cni_tools(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    return build_cnirun(), build_plugin(tmp_path_factory.mktemp("cni-bin")).parent


@pytest.fixture
def node(cni_tools: tuple[Path, Path]) -> Iterator[CniNode]:
    with CniNode(*cni_tools, plugin_conf={"backend": "iptables-nft"}) as n:
        yield n


@pytest.mark.netns
def test_cni_add_sets_it_from_the_annotation_and_del_restores(node: CniNode) -> None:
    pod = node.new_pod("app")
    annotations = {**SIDECAR, "meshnet.io/prevent-tuple-collision": "early-demux"}
    assert node.add(pod, annotations).ok
    assert _demux(pod.name) == 0
    assert node.delete(pod, annotations).ok
    assert _demux(pod.name) == 1
    plain = node.new_pod("plain")
    assert node.add(plain, SIDECAR).ok  # auto: on this kernel nothing changes
    assert _demux(plain.name) == (1 if ON_FIXED_KERNEL else 0)
