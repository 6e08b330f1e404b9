"""Istio's own expected outputs, reproduced byte for byte (after trimming) from flags/annotations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness.golden_cases import CASES, CNI_CASES, GOLDEN, Case, golden_path, spec_of

from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.nft_builder import build_nft
from meshnet.plan.render_nft import render_nft
from meshnet.plan.render_restore import render_family, render_transcript
from meshnet.spec.annotations import spec_from_annotations


def test_every_shared_golden_file_is_covered() -> None:
    names = {c.name for c in CASES}
    for kind in ("iptables", "nftables"):
        files = {p.name.removesuffix(".golden") for p in (GOLDEN / kind).glob("*.golden")}
        assert files, f"no golden files in {GOLDEN / kind}"
        assert files <= names, f"golden {kind} cases without a test: {files - names}"
    cni_files = {p.name.removesuffix(".txt.golden") for p in (GOLDEN / "cni-plugin").glob("*.golden")}
    assert cni_files <= set(CNI_CASES)


@pytest.mark.parametrize("case", [c for c in CASES if golden_path("iptables", c.name).exists()], ids=lambda c: c.name)
def test_iptables_transcript_matches_golden(case: Case) -> None:
    expected = golden_path("iptables", case.name).read_text()
    assert render_transcript(build_iptables(spec_of(case))).strip() == expected.strip()


@pytest.mark.parametrize("case", [c for c in CASES if golden_path("nftables", c.name).exists()], ids=lambda c: c.name)
def test_nft_transaction_matches_golden(case: Case) -> None:
    expected = golden_path("nftables", case.name).read_text()
    assert render_nft(build_nft(spec_of(case))).strip() == expected.strip()


@pytest.mark.parametrize("name", sorted(CNI_CASES))
def test_cni_restore_matches_golden(name: str) -> None:
    case = CNI_CASES[name]
    spec = spec_from_annotations(case["annotations"], proxy_uid=case.get("uid"), proxy_gid=case.get("gid"))
    expected = golden_path("cni-plugin", name).read_text()
    assert render_family(build_iptables(spec), 4).strip() == expected.strip()


def _cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=30)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("tproxy", "dns-uid-gid", "outbound-owner-groups",
                                                                  "ipv6-ipnets", "empty")], ids=lambda c: c.name)
def test_render_command_reproduces_golden(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, through the real `meshnet render` command line (flags, env, --resolv-conf, --ipv6)."""
    import os

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(case.resolv)
    env = {**os.environ, **case.env}
    extra = ["--resolv-conf", str(resolv)] + (["--ipv6"] if case.ipv6 else [])
    for fmt, kind in (("transcript", "iptables"), ("nft", "nftables")):
        out = _cli("render", *case.argv(), *extra, "--format", fmt, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == golden_path(kind, case.name).read_text().strip()


@pytest.mark.parametrize("name", sorted(CNI_CASES))
def test_render_cni_command_reproduces_golden(name: str) -> None:
    case = CNI_CASES[name]
    args = ["render", "--cni", "--format", "restore"]
    for key, value in case["annotations"].items():
        args += ["--annotation", f"{key}={value}"]
    if "uid" in case:
        args += ["--proxy-uid", str(case["uid"]), "--proxy-gid", str(case["gid"])]
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == golden_path("cni-plugin", name).read_text().strip()
