"""The ambient goldens (tests/golden/istio/AMBIENT.md) as AmbientSpec values and render flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.golden_cases import GOLDEN

from meshnet.ambient.spec import AmbientSpec

ISTIO_TEST_V6 = "e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164"  # Istio's in-pod test config
VIRT = ("fake1s0f0", "fake1s0f1")


@dataclass(frozen=True)
class AmbientCase:
    name: str  # golden file stem
    kwargs: dict[str, object] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    host: bool = False

    def spec(self, kind: str) -> AmbientSpec:
        # ignore: the table's values are per-field (bool, str, tuple); AmbientSpec validates them
        return AmbientSpec(**self.kwargs, **_per_kind(self, kind))  # type: ignore[arg-type]

    def argv(self, kind: str) -> list[str]:
        extra = _per_kind(self, kind)
        out = ["--ambient-host" if self.host else "--ambient", *self.flags]
        if self.kwargs.get("enable_ipv6"):
            out.append("--ipv6")
        if "host_probe_snat_v6" in extra:
            out += ["--host-probe-snat-v6", str(extra["host_probe_snat_v6"])]
        if "kubelet_uid" in extra:
            out += ["--kubelet-uid", str(extra["kubelet_uid"])]
        return out


def _per_kind(case: AmbientCase, kind: str) -> dict[str, object]:
    """Istio's iptables host test keeps the default v6 SNAT address; every other test sets its own."""
    if case.host and kind == "iptables":
        return {}
    extra: dict[str, object] = {"host_probe_snat_v6": ISTIO_TEST_V6}
    if case.host:
        extra["kubelet_uid"] = "1000"  # Istio's test stubs kubelet's uid
    return extra


_BASE: list[tuple[str, dict[str, object], tuple[str, ...], bool]] = [
    ("default", {"redirect_dns": True}, ("--redirect-dns",), False),
    ("ingress", {"ingress_mode": True}, ("--ingress-mode",), False),
    ("virtual_interfaces", {"virtual_interfaces": VIRT}, ("--virtual-interfaces", ",".join(VIRT)), False),
    ("ingress_and_virtual_interfaces", {"ingress_mode": True, "virtual_interfaces": VIRT},
     ("--ingress-mode", "--virtual-interfaces", ",".join(VIRT)), False),
    ("dns_pod_enabled_and_off_globally", {"dns_proxy": "enabled"}, ("--dns-proxy", "enabled"), False),
    ("dns_pod_disabled_and_on_globally", {"redirect_dns": True, "dns_proxy": "disabled"},
     ("--redirect-dns", "--dns-proxy", "disabled"), False),
    ("hostprobe", {"redirect_dns": True}, ("--redirect-dns",), True),
]
AMBIENT_CASES = [AmbientCase(name + suffix, {**kw, **({"enable_ipv6": True} if suffix else {})}, flags, host)
                 for name, kw, flags, host in _BASE for suffix in ("", "_ipv6")]


def ambient_golden(kind: str, name: str) -> Path:
    return GOLDEN / f"ambient-{kind}" / f"{name}.golden"
