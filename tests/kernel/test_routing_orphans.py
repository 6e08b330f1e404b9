"""A writer SIGKILLed between adding TPROXY's local route and its policy rule leaves the route alone
(seen in test_faults_kill): cleanup removes it when it is exactly Istio's, and only then."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness.topology import CREATED_NAMESPACES, NS_PREFIX, is_root

pytestmark = pytest.mark.netns
MESHNET = [sys.executable, "-m", "meshnet.cli.main"]


@pytest.fixture
def ns() -> Iterator[str]:
    if not is_root():
        pytest.skip("needs root for real network namespaces (CI runs as root)")
    name = f"{NS_PREFIX}{secrets.token_hex(4)}-rt"
    subprocess.run(["ip", "netns", "add", name], check=True)
    CREATED_NAMESPACES.append(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _cleanup(ns: str) -> None:
    cp = subprocess.run([*MESHNET, "cleanup", "--netns", ns, "-q"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr


def test_istios_lone_local_route_is_removed_in_both_families(ns: str) -> None:
    _ip(ns, "route", "add", "local", "default", "dev", "lo", "table", "133")
    _ip(ns, "-6", "route", "add", "local", "default", "dev", "lo", "table", "133")
    _cleanup(ns)
    assert _ip(ns, "route", "show", "table", "133").strip() == ""
    assert _ip(ns, "-6", "route", "show", "table", "133").strip() == ""


@pytest.mark.parametrize("setup", [
    [["route", "add", "local", "default", "dev", "lo", "table", "100"]],             # not Istio's table
    [["route", "add", "local", "default", "dev", "lo", "table", "133"],
     ["route", "add", "10.77.0.0/16", "dev", "lo", "table", "133"]],                  # the table holds more
    [["route", "add", "local", "default", "dev", "lo", "table", "133"],
     ["rule", "add", "iif", "lo", "lookup", "133", "pref", "1000"]],                  # a rule uses it
])
def test_look_alikes_stay(ns: str, setup: list[list[str]]) -> None:
    for args in setup:
        _ip(ns, *args)
    table = setup[0][-1]
    before = _ip(ns, "route", "show", "table", table), _ip(ns, "rule", "show")
    _cleanup(ns)
    assert (_ip(ns, "route", "show", "table", table), _ip(ns, "rule", "show")) == before
