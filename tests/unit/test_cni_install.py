"""`meshnet cni install|uninstall` on temp dirs only (never the real /etc/cni or /opt/cni)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshnet.cli.app import cli
from meshnet.cni.install import PLUGIN_TYPE

MAIN_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "k8s-pod-network",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    conflist = conf_dir / "10-main.conflist"
    conflist.write_text(json.dumps(MAIN_CONFLIST, indent=2))
    os.chmod(conflist, 0o644)
    plugin = tmp_path / "prebuilt-meshnet-cni"
    plugin.write_bytes(b"#!/bin/sh\necho plugin v1\n")
    return {"conf_dir": conf_dir, "bin_dir": bin_dir, "conflist": conflist, "plugin": plugin}


def cni(*args: str) -> Any:
    return CliRunner().invoke(cli, ["cni", *args], catch_exceptions=False)


def test_install_is_idempotent_and_keeps_the_other_plugins(node: dict[str, Path]) -> None:
    args = ["install", "--conflist", str(node["conflist"]), "--bin-dir", str(node["bin_dir"]),
            "--plugin-file", str(node["plugin"]), "--exclude-namespace", "kube-system",
            "--exclude-namespace", "istio-system", "--log-level", "debug"]
    first = cni(*args)
    assert first.exit_code == 0, first.output
    assert "installed" in first.output and "added meshnet-cni" in first.output
    doc = json.loads(node["conflist"].read_text())
    assert doc["plugins"][:2] == MAIN_CONFLIST["plugins"]
    assert doc["plugins"][2] == {"type": PLUGIN_TYPE, "exclude_namespaces": ["kube-system", "istio-system"],
                                 "log_level": "debug",
                                 "capabilities": {"io.kubernetes.cri.pod-annotations": True}}
    binary = node["bin_dir"] / PLUGIN_TYPE
    assert binary.read_bytes() == node["plugin"].read_bytes()
    assert binary.stat().st_mode & 0o777 == 0o755
    assert node["conflist"].stat().st_mode & 0o777 == 0o644  # mode kept across the atomic replace
    before = (node["conflist"].read_bytes(), node["conflist"].stat().st_mtime_ns, binary.stat().st_mtime_ns)

    again = cni(*args)
    assert again.exit_code == 0 and "already installed" in again.output
    assert (node["conflist"].read_bytes(), node["conflist"].stat().st_mtime_ns, binary.stat().st_mtime_ns) == before
    assert sorted(p.name for p in node["conf_dir"].iterdir()) == ["10-main.conflist"]  # no temp files left


def test_reinstall_with_new_options_replaces_the_entry_in_place(node: dict[str, Path]) -> None:
    base = ["install", "--conflist", str(node["conflist"]), "--bin-dir", str(node["bin_dir"]),
            "--plugin-file", str(node["plugin"])]
    assert cni(*base).exit_code == 0
    # Someone chains another plugin after ours; a reinstall must keep its position and theirs.
    doc = json.loads(node["conflist"].read_text())
    doc["plugins"].append({"type": "tuning"})
    node["conflist"].write_text(json.dumps(doc))
    node["plugin"].write_bytes(b"#!/bin/sh\necho plugin v2\n")
    out = cni(*base, "--backend", "nftables")
    assert out.exit_code == 0, out.output
    plugins = json.loads(node["conflist"].read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "portmap", PLUGIN_TYPE, "tuning"]
    assert plugins[2]["backend"] == "nftables"
    assert (node["bin_dir"] / PLUGIN_TYPE).read_bytes().endswith(b"v2\n")


def test_uninstall_reverses_install_and_is_idempotent(node: dict[str, Path]) -> None:
    original = node["conflist"].read_text()
    assert cni("install", "--conf-dir", str(node["conf_dir"]), "--bin-dir", str(node["bin_dir"]),
               "--plugin-file", str(node["plugin"])).exit_code == 0
    out = cni("uninstall", "--conf-dir", str(node["conf_dir"]), "--bin-dir", str(node["bin_dir"]))
    assert out.exit_code == 0, out.output
    assert json.loads(node["conflist"].read_text()) == json.loads(original)
    assert not (node["bin_dir"] / PLUGIN_TYPE).exists()
    again = cni("uninstall", "--conflist", str(node["conflist"]), "--bin-dir", str(node["bin_dir"]))
    assert again.exit_code == 0 and "was not installed" in again.output


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}), "not a conflist"),
])
def test_bad_conflist_changes_nothing(node: dict[str, Path], content: str, words: str) -> None:
    node["conflist"].write_text(content)
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", "cni", "install", "--conflist",
                         str(node["conflist"]), "--bin-dir", str(node["bin_dir"]), "--plugin-file",
                         str(node["plugin"])], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert words in cp.stderr and "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert node["conflist"].read_text() == content
    assert not node["bin_dir"].exists()


def test_conflist_and_conf_dir_are_exclusive(node: dict[str, Path]) -> None:
    out = CliRunner().invoke(cli, ["cni", "uninstall", "--bin-dir", str(node["bin_dir"])])
    assert out.exit_code == 2 and "exactly one of --conflist" in out.output


def test_install_builds_a_runnable_zipapp(node: dict[str, Path]) -> None:
    out = cni("install", "--conflist", str(node["conflist"]), "--bin-dir", str(node["bin_dir"]))
    assert out.exit_code == 0, out.output
    binary = node["bin_dir"] / PLUGIN_TYPE
    data = binary.read_bytes()
    # An sh launcher that execs python3 -IS with the file itself on sys.path, then the zip data.
    assert data.startswith(b"#!/bin/sh\nexec /usr/bin/python3 -IS -c ")
    assert zipfile.is_zipfile(binary)
    cp = subprocess.run([str(binary)], input='{"cniVersion":"1.1.0"}', capture_output=True, text=True,
                        env={"CNI_COMMAND": "VERSION"}, timeout=30)
    assert cp.returncode == 0 and json.loads(cp.stdout)["cniVersion"] == "1.1.0"
