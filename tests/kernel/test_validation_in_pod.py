"""istio-validation as Kubernetes runs it: `istio-iptables --run-validation --skip-rule-apply` as uid/gid
1337 with no capabilities at all, inside the pod namespace (`setpriv --reuid 1337 --regid 1337
--clear-groups --inh-caps -all --bounding-set -all --no-new-privs`).

Istio's contract: exit 0 when a uid-1337 connection to 127.0.0.6:15002 lands on the 15001/15006 listener
with that original port, 126 when it does not. The rules come from the injector posture (the CNI's
job in a real cluster, the same rules).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.postures import (
    INJECTOR,
    ISTIO_INIT,
    MESHNET,
    PROXY_UID,
    TPROXY,
    VALIDATION,
    ProxyMeshnet,
    dump,
    in_pod,
    istio_iptables,
    ok,
    one_line_error,
)
from harness.topology import Topology

pytestmark = pytest.mark.netns

VALIDATE = ["--run-validation", "--skip-rule-apply", "--probe-timeout", "2s"]


@pytest.fixture(scope="module")
def proxy_meshnet() -> Iterator[ProxyMeshnet]:
    pm = ProxyMeshnet()
    try:
        yield pm
    finally:
        pm.close()


def validation(topo: Topology, pm: ProxyMeshnet, *flags: str) -> tuple[int, str, str]:
    cp = in_pod(topo.pod, [*pm.argv, "istio-iptables", *flags, *VALIDATE], posture=VALIDATION)
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp.returncode, cp.stdout, cp.stderr


def test_the_posture_is_istio_validations(topology: Topology) -> None:
    status = ok(in_pod(topology.pod, ["grep", "-E", "^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs)", "/proc/self/status"],
                       posture=VALIDATION))
    assert f"Uid:\t{PROXY_UID}\t{PROXY_UID}\t{PROXY_UID}\t{PROXY_UID}" in status, status
    assert f"Gid:\t{PROXY_UID}\t{PROXY_UID}" in status, status
    assert [line.split() for line in status.splitlines() if line.startswith("Groups:")] == [["Groups:"]], status
    assert "CapEff:\t0000000000000000" in status and "CapBnd:\t0000000000000000" in status, status
    assert "NoNewPrivs:\t1" in status


@pytest.mark.parametrize("flags", [ISTIO_INIT, TPROXY, [*ISTIO_INIT, "--native-nftables"],
                                   [*TPROXY, "--native-nftables"]], ids=["redirect", "tproxy", "nft", "nft-tproxy"])
def test_validation_passes_as_1337_when_rules_redirect(topology: Topology, proxy_meshnet: ProxyMeshnet,
                                                       flags: list[str]) -> None:
    ok(istio_iptables(topology.pod, *flags))
    before = dump(topology.pod)
    code, out, err = validation(topology, proxy_meshnet, *ISTIO_INIT)
    assert code == 0, err
    assert "validation passed in current: 127.0.0.6:15002 was redirected to 127.0.0.1:15006" in out, out
    assert dump(topology.pod) == before  # --skip-rule-apply: nothing written


def test_validation_exits_126_as_1337_without_rules(topology: Topology, proxy_meshnet: ProxyMeshnet) -> None:
    before = dump(topology.pod)
    code, _, err = validation(topology, proxy_meshnet, *ISTIO_INIT)
    assert code == 126, err
    assert len(err.strip().splitlines()) == 1, err
    assert "iptables validation failed; workload is not ready for Istio" in err, err
    assert "127.0.0.6:15002 as uid 1337: Connection refused" in err, err
    assert dump(topology.pod) == before


def test_validation_exits_126_when_the_proxy_uid_is_not_captured(topology: Topology,
                                                                 proxy_meshnet: ProxyMeshnet) -> None:
    """Rules written for another proxy uid (-u 1338): the uid-1337 client is not captured, so 126."""
    ok(istio_iptables(topology.pod, *ISTIO_INIT[:5], "1338", *ISTIO_INIT[6:]))
    code, _, err = validation(topology, proxy_meshnet, *ISTIO_INIT)
    assert code == 126, err


def test_istio_init_posture_cannot_validate_and_says_so_before_writing(topology: Topology) -> None:
    """As uid 0 with NET_ADMIN + NET_RAW only, the client cannot become uid 1337: one line, exit 1, no rules."""
    before = dump(topology.pod)
    line = one_line_error(istio_iptables(topology.pod, *ISTIO_INIT, "--run-validation", posture=INJECTOR), 1)
    assert "must run as the proxy uid 1337" in line and "lacks CAP_SETUID and CAP_SETGID" in line, line
    assert dump(topology.pod) == before


def test_root_from_outside_validates_with_a_setpriv_client(topology: Topology) -> None:
    """Full root (a node, the repair controller): the client switches to 1337 itself; 0 with rules, 126 without."""
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MESHNET, *args], capture_output=True, text=True, timeout=60)

    ns = topology.pod.label
    assert run("validate", "--netns", ns, "--timeout", "1s").returncode == 126
    cp = run("istio-iptables", "--network-namespace", ns, *ISTIO_INIT, "--run-validation")
    assert cp.returncode == 0 and "validation passed" in cp.stdout, cp.stderr
    assert run("validate", "--netns", ns).returncode == 0


def test_ipv6_only_pod_validates_over_loopback_six(topology: Topology, proxy_meshnet: ProxyMeshnet) -> None:
    """Istio's host-IP rule: no usable IPv4 address, so the client dials [::6]:15002 from ::1 (the ::6 on lo
    that istio-init added), and must land on [::1]:15006."""
    topology.pod.run(["ip", "addr", "del", f"{topology.pod_ip4}/{topology.link.prefix4}", "dev", "eth0"])
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    assert "::6/128" in dump(topology.pod)["lo"].split()
    code, out, err = validation(topology, proxy_meshnet, *ISTIO_INIT)
    assert code == 0 and "[::6]:15002 was redirected to [::1]:15006" in out, (out, err)
    ok(istio_iptables(topology.pod, "--cleanup-only"))
    code, _, err = validation(topology, proxy_meshnet, *ISTIO_INIT)
    assert code == 126 and "[::6]:15002 as uid 1337" in err, err
