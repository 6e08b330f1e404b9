"""The start-up budget: the pod-start paths import only what they use (docs/applier.md, "Start-up budget").

Each test runs a real pod-start path under `python -X importtime` and fails, naming the import
chain, when a module outside the budget is imported. Python runs with -S so that site (and the
editable install's finder, which pulls in pathlib/re/ipaddress itself) stays out of the picture:
what is measured is meshnet's own imports, as in the image where meshnet is a plain install.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cni_helpers import SIDECAR, CniNode, build_cnirun, build_plugin
from harness.topology import NS_PREFIX, is_root

from meshnet.lite.ipcheck import ip_version

REPO = Path(__file__).resolve().parents[2]
OUTSIDE_BUDGET = ("typing", "dataclasses", "inspect", "subprocess", "json", "argparse", "re", "enum",
                  "ipaddress", "threading", "click", "yaml", "scapy", "pyroute2", "iptc")
# What Istio's sidecar injector passes to istio-init (REDIRECT mode).
INJECTOR_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                 "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]


def import_chains(stderr: str) -> dict[str, list[str]]:
    """Module -> its importers, innermost first, from `-X importtime` output (a child is printed
    before its parent, one indentation level deeper)."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "self [us]" not in line:
            name = line.split("|")[2]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    chains = {}
    for i, (depth, name) in enumerate(rows):
        chain, level = [], depth
        for d, parent in rows[i + 1:]:
            if d < level:
                chain.append(parent)
                level = d
        chains[name] = chain
    return chains


def over_budget(chains: dict[str, list[str]]) -> dict[str, str]:
    return {m: " <- ".join([m, *chain]) for m, chain in chains.items() if m.split(".")[0] in OUTSIDE_BUDGET}


def meshnet_argv(*args: str) -> list[str]:
    """`meshnet ARGS` as the console script runs it, minus site (see the module doc)."""
    purelib = sysconfig.get_path("purelib")
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}]; sys.path.append({purelib!r});"
            " from meshnet.cli.main import main; main()")
    return [sys.executable, "-X", "importtime", "-S", "-c", code, *args]


def test_chain_parser_names_the_importer() -> None:
    cp = subprocess.run([sys.executable, "-X", "importtime", "-S", "-c", "import ipaddress"],
                        capture_output=True, text=True, check=True)
    chains = import_chains(cp.stderr)
    assert chains["ipaddress"] == [] and "ipaddress" in chains.get("functools", ["ipaddress"])
    assert "ipaddress" in over_budget(chains)


def test_istio_iptables_dry_run_stays_in_budget(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\nnameserver fd00::a\n")
    for extra in ([], ["--redirect-dns=true"]):  # the second one reads resolv.conf (DNS capture)
        env = {**os.environ, "MESHNET_RESOLV_CONF": str(resolv)}
        cp = subprocess.run(meshnet_argv("istio-iptables", "-n", *INJECTOR_ARGS, *extra), capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
        assert cp.returncode == 0, cp.stderr[-2000:]
        assert "-A ISTIO_OUTPUT" in cp.stdout  # the measurement saw the real path
        if extra:
            assert "10.96.0.10" in cp.stdout  # resolv.conf was read
        assert over_budget(import_chains(cp.stderr)) == {}, extra


@pytest.fixture
def pod_ns() -> Iterator[str]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    name = f"{NS_PREFIX}{secrets.token_hex(4)}-budget"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for args in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"],
                     ["addr", "add", "10.244.7.7/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            subprocess.run(["ip", "-n", name, *args], check=True, timeout=10)  # a pod address, no route out
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


@pytest.mark.netns
def test_istio_iptables_real_apply_stays_in_budget(pod_ns: str, tmp_path: Path) -> None:
    """What istio-init does in the pod: the real apply, run inside the pod's namespace."""
    cp = subprocess.run(["ip", "netns", "exec", pod_ns, *meshnet_argv("istio-iptables", *INJECTOR_ARGS)],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr[-2000:]
    chains = import_chains(cp.stderr)
    assert "meshnet.apply.applier" in chains  # the measurement saw the real apply
    assert over_budget(chains) == {}
    rules = subprocess.run(["ip", "netns", "exec", pod_ns, "iptables-save", "-t", "nat"], capture_output=True,
                           text=True, timeout=30).stdout
    assert "-A ISTIO_OUTPUT" in rules and "ISTIO_REDIRECT" in rules


@pytest.mark.netns
def test_istio_iptables_tproxy_pays_only_for_pyroute2(pod_ns: str, tmp_path: Path) -> None:
    """A TPROXY pod also needs its policy routing (ip rule + table 133), written with pyroute2:
    whatever is outside the budget must come in through pyroute2, never through meshnet itself."""
    args = [a if a != "REDIRECT" else "TPROXY" for a in INJECTOR_ARGS]
    cp = subprocess.run(["ip", "netns", "exec", pod_ns, *meshnet_argv("istio-iptables", *args)],
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr[-2000:]
    chains = import_chains(cp.stderr)
    assert "pyroute2" in chains
    not_via_pyroute2 = {m: c for m, c in over_budget(chains).items()
                        if m.split(".")[0] != "pyroute2" and "<- pyroute2" not in c}
    assert not_via_pyroute2 == {}
    rules = subprocess.run(["ip", "-n", pod_ns, "rule"], capture_output=True, text=True, timeout=10).stdout
    assert "fwmark 0x539 lookup 133" in rules


@pytest.fixture(scope="module")
def cni_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CniNode]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    tools = build_cnirun(), build_plugin(tmp_path_factory.mktemp("cni-bin")).parent
    with CniNode(*tools, plugin_conf={"backend": "iptables-nft"}) as node:
        yield node


@pytest.mark.netns
def test_cni_add_stays_in_budget(cni_node: CniNode) -> None:
    """The deployable zipapp's ADD (REDIRECT pod), as libcni execs it: config on stdin, CNI_* env."""
    pod = cni_node.new_pod("budget")
    assert cni_node.add(pod, {}).ok  # the bridge gives it a veth and an address (no sidecar: skipped)
    out = cni_node.plugin_only("ADD", pod, SIDECAR, prev={"cniVersion": "1.0.0"},
                               python_flags=["-X", "importtime"])
    assert out.ok, out.stdout + out.stderr
    chains = import_chains(out.stderr)
    assert "meshnet.apply.applier" in chains  # the measurement saw the real apply
    assert over_budget(chains) == {}


@pytest.mark.parametrize("text", ["10.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.256", "::1", "::ffff:1.2.3.4",
                                  "::ffff:01.2.3.4", "1::2::3", "fe80::1", " 1.2.3.4", "1.2.3.4\x00", "x",
                                  "0x1.2.3.4", "\u0661.2.3.4", ""])
def test_resolvconf_address_check_agrees_with_ipaddress(text: str) -> None:
    """resolv.conf and spec DNS servers are checked with inet_pton (budget) instead of ipaddress: same verdicts."""
    try:
        expected: int | None = ipaddress.ip_address(text).version
    except ValueError:
        expected = None
    assert ip_version(text) == expected
