"""Istio's golden cases (tests/golden/istio/CASES.md, vendored: see PROVENANCE.md there) as flags, env and pod facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

from meshnet.spec.flags import parse_istio_args
from meshnet.spec.resolvconf import parse_nameservers
from meshnet.spec.spec import Spec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "istio"  # vendored: the tests need nothing outside the repo
BASE_FLAGS = ["-p", "15001", "-z", "15006", "-e", "15008", "-u", "1337", "-g", "1337", "-t", "1337", "-r", "133"]


@dataclass(frozen=True)
class Case:
    name: str
    flags: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ipv6: bool = False
    resolv: str = ""  # resolv.conf content

    def argv(self) -> list[str]:
        # Later flags win in argparse, so the case's own -u/-g override the base ones.
        return BASE_FLAGS + self.flags


CASES = [
    Case("ipv6-empty-inbound-ports", ["-b", ""], ipv6=True),
    Case("tproxy", ["-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "-n", "--redirect-dns",
                    "-u", "1337", "-g", "1337", "-c", "not-istio-nic"], ipv6=True, resolv="nameserver 127.0.0.53\n"),
    Case("ipv6-inbound-ports", ["-b", "4000,5000"], ipv6=True),
    Case("ipv6-virt-interfaces", ["-b", "4000,5000", "-k", "eth0,eth1"], ipv6=True),
    Case("ipv6-ipnets", ["-b", "4000,5000", "-d", "6000,7000,", "-k", "eth0,eth1", "-x", "2001:db8::/32",
                         "-i", "2001:db8::/32"], ipv6=True),
    Case("ipv6-outbound-ports", ["-q", "32000,31000"], ipv6=True),
    Case("empty", []),
    Case("kube-virt-interfaces", ["-k", "eth1,eth2", "-i", "*"]),
    Case("ipnets", ["-i", "10.0.0.0/8"]),
    Case("inbound-ports-include", ["-b", "32000,31000"]),
    Case("inbound-ports-wildcard", ["-b", "*"]),
    Case("inbound-ports-tproxy", ["-b", "32000,31000", "-m", "TPROXY"]),
    Case("inbound-ports-empty-tproxy", ["-m", "TPROXY"]),
    Case("dns-uid-gid", ["--redirect-dns", "-g", "1,2", "-u", "3,4"], ipv6=True,
         resolv="nameserver 127.0.0.53\nnameserver ::127.0.0.53\n"),
    Case("ipv6-dns-uid-gid", ["--redirect-dns", "-g", "1,2", "-u", "3,4"], ipv6=True),
    Case("outbound-owner-groups", [], env={"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}),
    Case("ipv6-dns-outbound-owner-groups", ["--redirect-dns"], env={"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"},
         ipv6=True),
    Case("outbound-ports-include", ["-q", "32000,31000"]),
    Case("loopback-outbound-iprange", ["-i", "127.1.2.3/32", "-n", "--redirect-dns", "-g", "1,2", "-u", "3,4"],
         resolv="nameserver 127.0.0.53\n"),
    Case("basic-exclude-nic", ["-c", "not-istio-nic"]),
    Case("drop-invalid", ["--drop-invalid"]),
]

class CniCase(TypedDict):
    annotations: dict[str, str]  # the pod's
    uid: NotRequired[int]  # the proxy's uid and gid, when not Istio's 1337
    gid: NotRequired[int]


CNI_CASES: dict[str, CniCase] = {
    "basic": {"annotations": {}},
    "include-exclude-ports": {"annotations": {
        "traffic.sidecar.istio.io/includeInboundPorts": "1111,2222",
        "traffic.sidecar.istio.io/excludeInboundPorts": "3333,4444",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5555,6666"}},
    "tproxy": {"annotations": {"sidecar.istio.io/interceptionMode": "TPROXY"}},
    "dns": {"annotations": {"proxy.istio.io/config": '{"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"}}'}},
    "custom-uid": {"annotations": {}, "uid": 1000670000, "gid": 1000670001},
}


def golden_path(kind: str, name: str) -> Path:
    if kind == "cni-plugin":
        return GOLDEN / kind / f"{name}.txt.golden"
    return GOLDEN / kind / f"{name}.golden"


def spec_of(case: Case) -> Spec:
    """The Spec istio-iptables builds from the case's flags, environment and resolv.conf."""
    spec, _ = parse_istio_args(case.argv(), env=case.env, enable_ipv6=case.ipv6,
                               dns_servers=parse_nameservers(case.resolv))
    return spec
