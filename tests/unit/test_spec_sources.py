"""The three spec sources agree: YAML profiles, istio-iptables flags, pod annotations."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.render_restore import render_transcript
from meshnet.spec.annotations import spec_from_annotations
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.yaml_file import load_spec_file

RULES = Path(__file__).resolve().parents[2] / "profiles"
INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]


def test_redirect_profile_equals_injector_flags() -> None:
    from_yaml = load_spec_file(str(RULES / "istio-sidecar-redirect.yaml"))
    from_flags, _ = parse_istio_args(INJECTOR, env={})
    assert from_yaml == from_flags


def test_tproxy_profile_equals_tproxy_flags() -> None:
    from_yaml = load_spec_file(str(RULES / "istio-sidecar-tproxy.yaml"))
    from_flags, _ = parse_istio_args([*INJECTOR[:7], "TPROXY", *INJECTOR[8:]], env={})
    assert render_transcript(build_iptables(from_yaml)) == render_transcript(build_iptables(from_flags))


def test_dns_profile_equals_cni_dns_pod() -> None:
    from_yaml = load_spec_file(str(RULES / "istio-dns-capture.yaml"))
    from_pod = spec_from_annotations(
        {"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: 'true'\n"})
    assert render_transcript(build_iptables(from_yaml)) == render_transcript(build_iptables(from_pod))


@pytest.mark.parametrize("path", sorted(RULES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_loads(path: Path) -> None:
    spec = load_spec_file(str(path))
    assert "ISTIO_OUTPUT" in render_transcript(build_iptables(spec))


def test_annotation_overrides_and_defaults() -> None:
    spec = spec_from_annotations({
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8, 192.168.0.0/16",
        "istio.io/reroute-virtual-interfaces": "net1",
        "traffic.sidecar.istio.io/kubevirtInterfaces": "ignored0",
        "traffic.sidecar.istio.io/excludeInboundPorts": "8080,15020",
    })
    assert spec.outbound_exclude_cidrs == ("10.0.0.0/8", "192.168.0.0/16")
    assert spec.kube_virt_interfaces == ("net1",)  # the preferred annotation wins
    assert spec.inbound_exclude_ports == (8080, 15020, 15021, 15090)  # deduplicated, Istio's order
    assert spec.outbound_exclude_ports == (15020,)
