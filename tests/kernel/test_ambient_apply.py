"""`apply --ambient` / `cleanup --ambient` on real namespaces, every backend (issue 13, "Applying").

Per backend: the rules and the policy routing land and compare equal to the spec; a second apply
is a no-op; a different spec is refused, then reconciled; cleanup leaves every piece of state
exactly as it was before (user rules included); a failed write rolls everything back. Host
probe rules and ipsets go into the test's own namespace standing in for a node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ns_state import add_user_state, snapshot
from harness.ns_state import wrapper_dir as _wrapper_dir
from harness.topology import Topology

from meshnet.ambient.apply import ambient_drift, apply_ambient, cleanup_ambient
from meshnet.ambient.spec import AmbientSpec
from meshnet.apply.applier import cleanup
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError

pytestmark = pytest.mark.netns
BACKENDS = ("iptables-legacy", "iptables-nft", "iptc", "nftables")
SPEC = AmbientSpec(redirect_dns=True, enable_ipv6=True, virtual_interfaces=("eth8",))


@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        yield topo.pod


def _routing(ns: Netns) -> dict[str, bool]:
    out = {}
    for fam in ("-4", "-6"):
        rules = ns.run(["ip", fam, "rule"]).stdout
        out[f"rule{fam}"] = "32764:\tfrom all fwmark 0x111/0xfff lookup 100" in rules
        out[f"route{fam}"] = "local default dev lo" in ns.run(["ip", fam, "route", "show", "table", "100"]).stdout
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_is_idempotent_reconciles_and_cleans_up_exactly(pod: Netns, backend: str) -> None:
    add_user_state(pod, backend if backend != "nftables" else "iptables-nft")
    before = snapshot(pod)
    result = apply_ambient(pod, SPEC, backend=backend)
    assert result.changed and result.backend == backend
    assert ambient_drift(pod, SPEC) == []
    assert all(_routing(pod).values()), _routing(pod)
    after_first = snapshot(pod)
    again = apply_ambient(pod, SPEC, backend=backend)
    assert not again.changed and "already applied" in again.message
    assert snapshot(pod) == after_first
    other = AmbientSpec(ingress_mode=True, enable_ipv6=True)
    with pytest.raises(ApplyError, match="differ from the ambient spec"):
        apply_ambient(pod, other, backend=backend)
    assert snapshot(pod) == after_first  # refused: nothing changed
    assert apply_ambient(pod, other, backend=backend, reconcile=True).changed
    assert ambient_drift(pod, other) == []
    assert ambient_drift(pod, SPEC) != []
    res = cleanup_ambient(pod)
    assert res.changed
    assert snapshot(pod) == before
    assert not cleanup_ambient(pod).changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_generic_cleanup_removes_ambient_state_too(pod: Netns, backend: str) -> None:
    before = snapshot(pod)
    apply_ambient(pod, SPEC, backend=backend)
    assert cleanup(pod).changed
    assert snapshot(pod) == before


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_failed_v6_restore_rolls_back_rules_and_routing(pod: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        backend: str) -> None:
    add_user_state(pod, backend)
    before = snapshot(pod)
    variant = backend.split("-")[1]
    monkeypatch.setenv("PATH", f"{_wrapper_dir(tmp_path, f'ip6tables-{variant}-restore', 'cat >/dev/null; exit 2')}:"
                               f"{os.environ['PATH']}")
    with pytest.raises(ApplyError, match="ip6tables"):
        apply_ambient(pod, SPEC, backend=backend)
    monkeypatch.undo()
    assert snapshot(pod) == before


def test_failed_nft_transaction_changes_nothing(pod: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(pod)
    real = shutil.which("nft")
    fail_writes = f'case "$*" in *-f*) cat >/dev/null; exit 1;; esac; exec {real} "$@"'
    monkeypatch.setenv("PATH", f"{_wrapper_dir(tmp_path, 'nft', fail_writes)}:{os.environ['PATH']}")
    with pytest.raises(ApplyError):
        apply_ambient(pod, SPEC, backend="nftables")
    monkeypatch.undo()
    assert snapshot(pod) == before


def _sets(ns: Netns) -> list[str]:
    return ns.run(["ipset", "list", "-n"]).stdout.split()


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_probe_rules_and_ipsets_in_a_node_namespace(pod: Netns, backend: str) -> None:
    node = pod  # a namespace made for the test stands in for the node: never the host's
    before, sets_before = snapshot(node), _sets(node)
    spec = AmbientSpec(enable_ipv6=True, kubelet_uid="0")
    assert apply_ambient(node, spec, backend=backend, host=True).changed
    assert ambient_drift(node, spec, host=True) == []
    if backend != "nftables":
        assert {"istio-inpod-probes-v4", "istio-inpod-probes-v6"} <= set(_sets(node))
    else:
        listing = node.run(["nft", "list", "table", "inet", "istio-ambient-nat"]).stdout
        assert "set istio-inpod-probes-v4" in listing and "set istio-inpod-probes-v6" in listing
    assert not apply_ambient(node, spec, backend=backend, host=True).changed
    assert cleanup_ambient(node, host=True).changed
    assert snapshot(node) == before and _sets(node) == sets_before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_apply_diff_cleanup(pod: Netns) -> None:
    before = snapshot(pod)
    flags = ["--ambient", "--redirect-dns", "--ipv6", "--netns", pod.path]
    out = _cli("apply", *flags, "--backend", "iptables-nft")
    assert out.returncode == 0 and out.stdout.startswith("applied 36 ambient rules with iptables-nft"), out
    out = _cli("apply", *flags)
    assert out.returncode == 0 and "already applied" in out.stdout, out
    out = _cli("diff", *flags)
    assert out.returncode == 0 and out.stdout.startswith("in sync"), out
    out = _cli("diff", "--ambient", "--netns", pod.path)
    assert out.returncode == 1 and "+ iptables -t raw -A PREROUTING -j ISTIO_PRERT" in out.stdout, out
    out = _cli("apply", "--ambient", "--netns", pod.path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "--reconcile" in out.stderr
    out = _cli("cleanup", "--ambient", "--netns", pod.path)
    assert out.returncode == 0 and "ip rule del fwmark 0x111/0xfff pref 32764 lookup 100" in out.stdout, out
    assert snapshot(pod) == before
    out = _cli("apply", "--ambient", "--dns-proxy", "sometimes", "--netns", pod.path)
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and snapshot(pod) == before


def test_cni_check_compares_an_ambient_pod_with_its_spec(pod: Netns) -> None:
    from meshnet.cni.commands import cmd_check
    from meshnet.cni.config import parse_config
    from meshnet.cni.log import Log
    from meshnet.cni.protocol import CniEnv, CniError

    doc = {"cniVersion": "1.0.0", "name": "t", "backend": "iptables-nft",
           "ambient": {"namespaces": ["mesh"], "redirect_dns": True}}
    config = parse_config(doc)
    env = CniEnv("CHECK", "c1", pod.path, "eth0", {"K8S_POD_NAMESPACE": "mesh", "K8S_POD_NAME": "p"})
    with pytest.raises(CniError, match="redirection differs") as err:
        cmd_check(env, config, doc, Log())
    assert "no ambient rules installed" in err.value.details
    apply_ambient(pod, AmbientSpec(redirect_dns=True), backend="iptables-nft")
    assert cmd_check(env, config, doc, Log()) is None
    other = CniEnv("CHECK", "c1", pod.path, "eth0", {"K8S_POD_NAMESPACE": "elsewhere", "K8S_POD_NAME": "p"})
    assert cmd_check(other, config, doc, Log()) is None  # not enrolled, no sidecar: nothing to check
