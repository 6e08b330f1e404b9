"""Bad input through the real command line: one clear line, exit 1 (2 for usage), no output, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD = [
    (["render", "-b", "80,abc"], 1, "--istio-inbound-ports"),
    (["render", "-b", "70000"], 1, "--istio-inbound-ports"),
    (["render", "-i", "10.0.0.0/33"], 1, "--istio-service-cidr"),
    (["render", "-i", "10.0.0.1"], 1, "prefix length missing"),
    (["render", "-x", "*"], 1, "--istio-service-exclude-cidr"),
    (["render", "-c", "eth0 -j ACCEPT"], 1, "--istio-exclude-interfaces"),
    (["render", "-c", "eth0\n-A OUTPUT -j ACCEPT"], 1, "single line"),
    (["render", "-k", "averyveryverylongname"], 1, "--kube-virt-interfaces"),
    (["render", "-m", "tproxy"], 1, "--istio-inbound-interception-mode"),
    (["render", "-u", "1337;reboot"], 1, "--proxy-uid"),
    (["render", "--format", "yaml"], 2, "invalid choice"),
    (["render", "--no-such-flag"], 2, "unrecognized arguments"),
    (["render", "--cni", "--annotation", "traffic.sidecar.istio.io/excludeInboundPorts=80}"], 1, "excludeInboundPorts"),
    (["render", "--cni", "--annotation", "sidecar.istio.io/interceptionMode=BOGUS"], 1, "interceptionMode"),
    (["render", "--cni", "--annotation", "proxy.istio.io/config=[1"], 1, "proxy.istio.io/config"),
    (["render", "-f", "/nonexistent/spec.yaml"], 1, "spec file"),
    (["istio-iptables", "-n", "-t", "0"], 1, "--istio-inbound-tproxy-mark"),
    (["istio-iptables", "-n", "--force-iptables-binary", "both"], 1, "--force-iptables-binary"),
    (["istio-iptables", "-n", "--bogus"], 2, "unknown flag"),
    (["istio-iptables", "-n", "-b"], 2, "needs an argument"),
    (["istio-iptables", "-n", "stray"], 2, "unexpected argument"),
]
BAD_ENV = [
    ({"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(i) for i in range(65))}, "at most 64"),
    ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, "loopback"),
    ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/4"}, "between 8 and 32"),
    ({"ISTIO_INBOUND_PORTS": "80 81"}, "whitespace"),
    ({"REDIRECT_DNS": "maybe"}, "--redirect-dns"),
]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=30)


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("args", "code", "needle"), BAD, ids=lambda x: str(x)[:40])
def test_bad_flag_is_one_line_error(args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(run(args), code, needle)


@pytest.mark.parametrize(("env", "needle"), BAD_ENV, ids=lambda x: str(x)[:40])
def test_bad_env_is_one_line_error(env: dict[str, str], needle: str) -> None:
    assert_one_line_error(run(["render"], env), 1, needle)
    assert_one_line_error(run(["istio-iptables", "-n"], env), 1, needle)


def test_bad_yaml_spec_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: REDIRECT\ninbound_portz: '*'\n")
    assert_one_line_error(run(["render", "-f", str(bad)]), 1, "inbound_portz")
    bad.write_text("exclude_interfaces: ['eth0', 'x y']\n")
    assert_one_line_error(run(["render", "-f", str(bad)]), 1, "exclude_interfaces")
    bad.write_text("key: [unclosed\n")
    assert_one_line_error(run(["render", "-f", str(bad)]), 1, "not valid YAML")


def test_good_input_renders() -> None:
    res = run(["render", "-b", "*", "-i", "*", "-c", "eth9", "--format", "nft"])
    assert res.returncode == 0, res.stderr
    assert "add rule inet istio-proxy-nat prerouting iifname eth9 counter return" in res.stdout
