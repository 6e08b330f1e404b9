"""The diagnostic CLI inside a pod: `kubectl debug -it POD --target=C --profile=netadmin -- meshnet doctor`.

Such a container shares the pod's network namespace and has NET_ADMIN + NET_RAW as root, nothing
else (no CAP_SYS_ADMIN, so no setns). With no --netns/--pid, `doctor`, `status`, `diff`, `explain`
and `conntrack analyze` inspect the namespace they run in, and must say what full root says when
it inspects the pod from outside. Without the capabilities: one line naming them, exit 2. `apply`
and `cleanup` still refuse the namespace they run in.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

import pytest
from harness.postures import (
    INJECTOR,
    ISTIO_INIT,
    MESHNET,
    NET_ADMIN_ONLY,
    NETADMIN,
    NO_CAPS,
    PROXY_UID,
    dump,
    in_pod,
    istio_iptables,
    ok,
    one_line_error,
)
from harness.topology import Topology

pytestmark = pytest.mark.netns


def debug(topo: Topology, *args: str, posture: Sequence[str] = NETADMIN) -> subprocess.CompletedProcess[str]:
    """meshnet run from a debug container of the pod: no target given."""
    return in_pod(topo.pod, [*MESHNET, *args], posture=posture)


def outside(topo: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command by full root on the node, with --netns."""
    return subprocess.run([*MESHNET, *args, "--netns", topo.pod.label], capture_output=True, text=True, timeout=60)


def kinds(cp: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    return sorted((f["severity"], f["kind"]) for f in json.loads(cp.stdout)["findings"])


def test_doctor_and_status_in_a_debug_container_match_the_node_view(topology: Topology) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    # broken: the rules capture, but no sidecar listens
    sick, sick_out = debug(topology, "doctor", "--json"), outside(topology, "doctor", "--json")
    assert sick.returncode == sick_out.returncode == 1, (sick.stderr, sick_out.stderr)
    assert kinds(sick) == kinds(sick_out) and ("critical", "proxy-not-listening") in kinds(sick), sick.stdout
    assert json.loads(sick.stdout)["netns"] == "current"
    # healthy: a fake sidecar as uid 1337 on the capture ports
    topology.start_server(topology.pod, "proxy", tcp_ports=[15001, 15006], uid=PROXY_UID)
    well, well_out = debug(topology, "doctor", *ISTIO_INIT), outside(topology, "doctor", *ISTIO_INIT)
    assert well.returncode == well_out.returncode == 0, well.stdout
    assert "healthy: no findings" in well.stdout
    st, st_out = debug(topology, "status", "--json", *ISTIO_INIT), outside(topology, "status", "--json", *ISTIO_INIT)
    assert st.returncode == st_out.returncode == 0, st.stderr
    mine, theirs = json.loads(st.stdout), json.loads(st_out.stdout)
    assert mine.pop("namespace") == "current" and theirs.pop("namespace") == topology.pod.label
    assert mine == theirs and mine["in_sync"] and mine["backends"] == ["iptables-nft"], mine


def test_diff_explain_conntrack_in_a_debug_container(topology: Topology) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    same = debug(topology, "diff", *ISTIO_INIT)
    assert same.returncode == 0 and "current (iptables-nft): in sync with the spec" in same.stdout, same.stderr
    other = debug(topology, "diff", *ISTIO_INIT[:-1], "15090,15021", "--json")
    assert other.returncode == 1, other.stderr
    assert [e["line"] for e in json.loads(other.stdout)["entries"]] == \
        ["+ iptables -t nat -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN"]
    packet = f"tcp 10.1.1.1:5000 -> {topology.pod_ip4}:8080 in iface=eth0"
    ex = debug(topology, "explain", packet)
    assert ex.returncode == 0 and "verdict: REDIRECT to :15006" in ex.stdout, (ex.stdout, ex.stderr)
    ct = debug(topology, "conntrack", "analyze", "--json")
    assert ct.returncode in (0, 1), ct.stderr  # 1 would be findings; the point is that it could read
    ct_out = outside(topology, "conntrack", "analyze", "--json")
    assert json.loads(ct.stdout)["findings"] == json.loads(ct_out.stdout)["findings"]


def test_an_nftables_and_tproxy_pod_reads_the_same(topology: Topology) -> None:
    tproxy = [*ISTIO_INIT[:6], "-m", "TPROXY", *ISTIO_INIT[8:], "--native-nftables"]
    ok(istio_iptables(topology.pod, *tproxy))
    st = json.loads(ok(debug(topology, "status", "--json", *tproxy)))
    assert st["backends"] == ["nftables"] and st["tproxy_routing"] and st["in_sync"], st


COMMANDS = [["doctor"], ["status"], ["diff", *ISTIO_INIT], ["explain", "tcp 10.1.1.1:5000 -> 10.2.2.2:8080 in"],
            ["conntrack", "analyze"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_without_capabilities_one_line_and_exit_2(topology: Topology, args: list[str]) -> None:
    line = one_line_error(debug(topology, *args, posture=NO_CAPS), 2)
    assert "needs CAP_NET_ADMIN; this process lacks CAP_NET_ADMIN" in line, line
    assert "kubectl debug --profile=netadmin" in line


def test_legacy_tables_also_need_net_raw(topology: Topology) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT, "--force-iptables-binary", "legacy"))
    line = one_line_error(debug(topology, "status", posture=NET_ADMIN_ONLY), 2)
    assert "iptables-legacy tables" in line and "lacks CAP_NET_RAW" in line, line
    st = json.loads(ok(debug(topology, "status", "--json")))
    assert st["backends"] == ["iptables-legacy"], st


def test_net_admin_alone_is_enough_without_legacy_tables(topology: Topology) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    assert json.loads(ok(debug(topology, "status", "--json", posture=NET_ADMIN_ONLY)))["backends"] == ["iptables-nft"]


def test_from_outside_without_sys_admin_names_it(topology: Topology) -> None:
    """On the node with NET_ADMIN + NET_RAW only, --netns would need setns: one line, exit 2."""
    cp = subprocess.run([*INJECTOR, *MESHNET, "status", "--netns", topology.pod.label], capture_output=True,
                        text=True, timeout=60)
    line = one_line_error(cp, 2)
    assert "needs CAP_SYS_ADMIN; this process lacks CAP_SYS_ADMIN" in line, line


@pytest.mark.parametrize("args", [["apply", *ISTIO_INIT], ["cleanup"], ["cleanup", "--netns", "/proc/self/ns/net"]],
                         ids=["apply", "cleanup", "cleanup-self"])
def test_writing_commands_refuse_the_current_namespace(topology: Topology, args: list[str]) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    before = dump(topology.pod)
    line = one_line_error(debug(topology, *args), 2)
    assert "namespace meshnet runs in" in line, line
    assert dump(topology.pod) == before
