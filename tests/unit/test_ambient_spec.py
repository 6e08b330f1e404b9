"""AmbientSpec: readers and validation (flags are covered through `render` in test_ambient_golden)."""

from __future__ import annotations

import pytest

from meshnet.ambient.spec import AmbientSpec, enrolled, overrides_from_annotations, spec_from_mapping
from meshnet.errors import SpecError


def test_pod_dns_override_wins_over_node_setting() -> None:
    assert AmbientSpec(redirect_dns=True).dns_effective
    assert not AmbientSpec(redirect_dns=True, dns_proxy="disabled").dns_effective
    assert AmbientSpec(redirect_dns=False, dns_proxy="enabled").dns_effective
    assert not AmbientSpec().dns_effective


def test_annotations_become_pod_overrides() -> None:
    base = AmbientSpec(redirect_dns=True)
    spec = overrides_from_annotations(base, {
        "ambient.istio.io/dns-capture": "False",
        "ambient.istio.io/bypass-inbound-capture": "t",
        "istio.io/reroute-virtual-interfaces": " eth1 , ,eth2",
        "unrelated/annotation": "anything",
    })
    assert (spec.dns_proxy, spec.ingress_mode, spec.virtual_interfaces) == ("disabled", True, ("eth1", "eth2"))
    assert spec.redirect_dns
    assert overrides_from_annotations(base, {}) == base


@pytest.mark.parametrize("annotations", [
    {"ambient.istio.io/dns-capture": "yes"},
    {"ambient.istio.io/bypass-inbound-capture": ""},
    {"istio.io/reroute-virtual-interfaces": "eth0\nx"},
    {"istio.io/reroute-virtual-interfaces": "a{b"},
])
def test_bad_annotations_are_refused(annotations: dict[str, str]) -> None:
    with pytest.raises(SpecError):
        overrides_from_annotations(AmbientSpec(), annotations)


def test_yaml_mapping() -> None:
    spec = spec_from_mapping({"spec": {"redirect_dns": "true", "virtual_interfaces": ["a0", "b0"],
                                       "dns_proxy": "Enabled", "host_probe_snat": "169.254.7.128",
                                       "host_probe_snat_v6": "fd16:0:0:0:0:0:0:1", "kubelet_uid": 1000}})
    assert spec == AmbientSpec(redirect_dns=True, virtual_interfaces=("a0", "b0"), dns_proxy="enabled",
                               host_probe_snat="169.254.7.128", host_probe_snat_v6="fd16::1", kubelet_uid="1000")
    with pytest.raises(SpecError, match="unknown field"):
        spec_from_mapping({"redirect_dsn": True})
    with pytest.raises(SpecError):
        spec_from_mapping({"ingress_mode": "sometimes"})


@pytest.mark.parametrize("kwargs", [
    {"host_probe_snat": "169.254.007.127"}, {"host_probe_snat": "fd00::1"}, {"host_probe_snat_v6": "FD16::1"},
    {"dns_proxy": "on"}, {"virtual_interfaces": ("eth0,eth1",)}, {"virtual_interfaces": "eth0"},
    {"kubelet_uid": "01000"}, {"kubelet_uid": "x"}, {"redirect_dns": "true"},
])
def test_direct_construction_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        AmbientSpec(**kwargs)  # type: ignore[arg-type]  # the point: wrong values are refused


def test_enrolment() -> None:
    amb = {"istio.io/dataplane-mode": "ambient"}
    none = {"istio.io/dataplane-mode": "none"}
    assert enrolled({}, amb) and enrolled(amb, {}) and enrolled(amb, none)
    assert not enrolled(none, amb) and not enrolled({}, {}) and not enrolled({}, none)


def test_cni_ambient_section_and_enrolment() -> None:
    from meshnet.ambient.cni import parse_ambient, pod_enrolled
    from meshnet.cni.config import parse_config
    from meshnet.cni.pod import PodInfo
    from meshnet.cni.protocol import CniError

    cfg = parse_ambient({"redirect_dns": True, "ipv6": True, "namespaces": ["mesh"], "state_dir": "/run/x"})
    assert cfg.spec == AmbientSpec(redirect_dns=True, enable_ipv6=True) and cfg.namespaces == ("mesh",)
    mode = "istio.io/dataplane-mode"
    assert pod_enrolled(PodInfo("mesh", "a"), cfg)
    assert not pod_enrolled(PodInfo("mesh", "a", labels={mode: "none"}), cfg)
    # Labels only (as istio-cni): an annotation enrolls nothing; sidecar pods are never ambient's.
    assert not pod_enrolled(PodInfo("other", "a", annotations={mode: "ambient"}), cfg)
    assert not pod_enrolled(PodInfo("other", "a"), cfg)
    assert pod_enrolled(PodInfo("other", "a", labels={mode: "ambient"}), cfg)
    assert not pod_enrolled(PodInfo("mesh", "a", annotations={"sidecar.istio.io/status": "{}"}), cfg)
    bad: object
    for bad in ({"namespaces": "mesh"}, {"state_dir": "rel"}, {"host_probes": "yes"}, {"redirect_dns": "maybe"},
                {"bogus": 1}, []):
        with pytest.raises(SpecError):
            parse_ambient(bad)
    with pytest.raises(CniError, match="invalid plugin configuration"):
        parse_config({"cniVersion": "1.0.0", "ambient": {"dns_proxy": "sometimes"}})
    assert parse_config({"cniVersion": "1.0.0"}).ambient is None
