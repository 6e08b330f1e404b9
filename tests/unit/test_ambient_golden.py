"""Istio's ambient goldens (cni/pkg/iptables and cni/pkg/nftables testdata), byte for byte.

Istio's iptables goldens carry no final newline (its test compares trimmed text); meshnet prints
one, so the comparison adds exactly that newline and nothing else. The two of Istio's 14 files per
kind missing from tests/golden/istio are in tests/data/istio-ambient/ (Apache-2.0, see PROVENANCE.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness.ambient_cases import AMBIENT_CASES, AmbientCase, ambient_golden
from harness.golden_cases import GOLDEN

from meshnet.ambient import render
from meshnet.ambient.nft_builder import build_host_nft, build_inpod_nft
from meshnet.ambient.xt_builder import build_host, build_inpod
from meshnet.plan.render_nft import render_nft

KINDS = ("iptables", "nftables")


def _expected(kind: str, case: AmbientCase) -> str:
    text = ambient_golden(kind, case.name).read_text()
    return text if text.endswith("\n") else text + "\n"


def _render(kind: str, case: AmbientCase) -> str:
    spec = case.spec(kind)
    if kind == "nftables":
        return render_nft(build_host_nft(spec) if case.host else build_inpod_nft(spec))
    return render.render_transcript(build_host(spec) if case.host else build_inpod(spec))


def _shared(kind: str) -> list[AmbientCase]:
    return [c for c in AMBIENT_CASES if ambient_golden(kind, c.name).exists()]


ISTIO_EXTRA = Path(__file__).resolve().parents[1] / "data" / "istio-ambient"
EXTRA_NAMES = ("dns_pod_disabled_and_on_globally_ipv6", "ingress_and_virtual_interfaces_ipv6")


@pytest.mark.parametrize("kind, name", [(k, n) for k in KINDS for n in EXTRA_NAMES])
def test_istios_two_unshared_goldens_per_kind(kind: str, name: str) -> None:
    case = next(c for c in AMBIENT_CASES if c.name == name)
    assert not ambient_golden(kind, name).exists() or ambient_golden(kind, name).read_bytes() == \
        (ISTIO_EXTRA / kind / f"{name}.golden").read_bytes()
    text = (ISTIO_EXTRA / kind / f"{name}.golden").read_text()
    assert _render(kind, case) == (text if text.endswith("\n") else text + "\n")


def test_all_fourteen_of_istios_cases_per_kind() -> None:
    for kind in KINDS:
        extra = {n for n in EXTRA_NAMES if (ISTIO_EXTRA / kind / f"{n}.golden").exists()}
        have = {c.name for c in _shared(kind)} | extra
        assert len(have) == 14, sorted(have)


def test_every_shared_ambient_golden_is_covered() -> None:
    names = {c.name for c in AMBIENT_CASES}
    for kind in KINDS:
        files = {p.name.removesuffix(".golden") for p in (GOLDEN / f"ambient-{kind}").glob("*.golden")}
        assert len(files) >= 12, f"expected Istio's ambient goldens in {GOLDEN}/ambient-{kind}"
        assert files <= names, files - names


@pytest.mark.parametrize("kind, case", [(k, c) for k in KINDS for c in _shared(k)],
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_builders_reproduce_golden(kind: str, case: AmbientCase) -> None:
    assert _render(kind, case) == _expected(kind, case)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", "render", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("kind", KINDS)
def test_render_command_reproduces_every_golden(kind: str) -> None:
    fmt = "nft" if kind == "nftables" else "transcript"
    for case in _shared(kind):
        out = _cli(*case.argv(kind), "--format", fmt)
        assert out.returncode == 0, (case.name, out.stderr)
        assert out.stdout == _expected(kind, case), case.name


def test_render_from_yaml_and_annotations_equals_flags(tmp_path: Path) -> None:
    spec_file = tmp_path / "ambient.yaml"
    spec_file.write_text("redirect_dns: false\nhost_probe_snat_v6: e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164\n"
                         "enable_ipv6: true\n")
    out = _cli("--ambient", "-f", str(spec_file), "--format", "nft",
               "--annotation", "ambient.istio.io/dns-capture=true")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (GOLDEN / "ambient-nftables" / "dns_pod_enabled_and_off_globally_ipv6.golden").read_text()
    out = _cli("--ambient", "--format", "transcript", "--annotation", "ambient.istio.io/bypass-inbound-capture=true",
               "--annotation", "istio.io/reroute-virtual-interfaces=fake1s0f0, fake1s0f1,")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (GOLDEN / "ambient-iptables" / "ingress_and_virtual_interfaces.golden").read_text() + "\n"


@pytest.mark.parametrize("args, message", [
    (["--dns-proxy", "maybe"], "invalid --dns-proxy 'maybe': expected enabled, disabled or unset"),
    (["--virtual-interfaces", "eth0;x"], "forbidden character"),
    (["--virtual-interfaces", "waytoolonginterfacename"], "not a valid interface name"),
    (["--host-probe-snat", "::1"], "expected an IPv4 address"),
    (["--host-probe-snat", "10.0.0.0/8"], "expected an IPv4 address"),
    (["--host-probe-snat-v6", "169.254.7.127"], "expected an IPv6 address"),
    (["--annotation", "ambient.istio.io/dns-capture=yes"], "expected true or false"),
    (["--annotation", "ambient.istio.io/bypass-inbound-capture=1 2"], "expected true or false"),
    (["--annotation", "istio.io/reroute-virtual-interfaces=a b"], "forbidden character"),
    (["--kubelet-uid", "-1"], "kubelet-uid"),
    (["--ambient-host"], "unrecognized arguments"),  # --ambient with --ambient-host: argv given twice below
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    if args == ["--ambient-host"]:
        out = _cli("--ambient", "--ambient-host")
        message = "two different namespaces"
    else:
        out = _cli("--ambient", *args)
    assert out.returncode != 0
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_nft_host_rules_need_kubelet_uid() -> None:
    out = _cli("--ambient-host", "--format", "nft")
    assert out.returncode == 1 and "--kubelet-uid" in out.stderr
