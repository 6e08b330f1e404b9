"""The installed wheel works without the checkout: every command's --help, meshnet-cni VERSION, and
`meshnet probe collision` finding its packet script (package data, not a path into the checkout).

The wheel is built offline from a copy of the sources (so no build/ or egg-info lands in the checkout)
with the project venv's setuptools, installed with --no-deps into a fresh venv whose only extra path is
a .pth line to the project venv's site-packages for the dependencies (click, yaml, ...). A .pth
directory's own .pth files are not processed, so the editable install of the checkout stays inactive:
the test asserts that meshnet is imported from the fresh venv. Everything runs from a temp cwd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LIST_COMMANDS = """
import click
from meshnet.cli.app import cli

def walk(cmd, path):
    yield path
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from walk(cmd.commands[name], [*path, name])

for path in walk(cli, []):
    print(" ".join(path))
"""


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.cwd = root / "cwd"

    def run(self, argv: list[str], input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=self.cwd, env=env, input=input)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.bin / "python"), "-c", code])


def _check(cp: subprocess.CompletedProcess[str], what: str) -> str:
    assert cp.returncode == 0, f"{what}: rc={cp.returncode}\n{cp.stdout[-1500:]}\n{cp.stderr[-1500:]}"
    return cp.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "meshnet", src / "meshnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300,
                          cwd=root), "pip wheel")
    wheels = list(dist.glob("meshnet-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    _check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=120), "venv")
    _check(subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "-q", "--no-deps", "--no-index", str(wheels[0])], capture_output=True, text=True,
                          timeout=300), "pip install")
    inst = Installed(root)
    inst.cwd.mkdir()
    site = inst.python("import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    (Path(site) / "project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    yield inst
    shutil.rmtree(root, ignore_errors=True)


def test_meshnet_comes_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = _check(installed.python("import meshnet, click; print(meshnet.__file__)"), "import")
    assert where.startswith(str(installed.root / "venv")), where
    assert not where.startswith(str(REPO) + os.sep)


def test_every_command_help(installed: Installed) -> None:
    commands = _check(installed.python(LIST_COMMANDS), "list commands").splitlines()
    assert {"", "apply", "probe", "probe collision", "doctor", "cni"} <= set(commands), commands
    meshnet = str(installed.bin / "meshnet")

    def helps(path: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return path, installed.run([meshnet, *path.split(), "--help"])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(helps, commands))
    failed = {p or "meshnet": (cp.returncode, cp.stderr.strip()[-300:]) for p, cp in results
              if cp.returncode != 0 or "usage:" not in cp.stdout.lower()}  # click or argparse
    assert failed == {}
    probe_help = dict(results)["probe collision"].stdout
    assert "--sport" in probe_help or "--port" in probe_help, probe_help
    ii = installed.run([meshnet, "istio-iptables", "--help"])
    assert ii.returncode == 0 and "-p, --envoy-port" in ii.stdout, ii.stderr[-500:]


def test_meshnet_cni_version(installed: Installed) -> None:
    cp = installed.run([str(installed.bin / "meshnet-cni")], input="",
                       env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    out = json.loads(_check(cp, "meshnet-cni VERSION"))
    assert "1.0.0" in out["supportedVersions"], out


def test_collision_probe_script_is_package_data(installed: Installed) -> None:
    script = _check(installed.python("from meshnet.diagnose.probes.collision import SCRIPT; print(SCRIPT)"), "SCRIPT")
    path = Path(script.strip())
    assert path.is_file() and path.is_relative_to(installed.root / "venv"), path
    # The script runs stand-alone (stdlib only until it sends packets): its own --help.
    cp = installed.run([str(installed.bin / "python"), str(path), "--help"])
    assert "--target" in _check(cp, "probe script --help")
