"""`meshnet istio-iptables` in the postures Kubernetes gives it, against the real kernel.

The injector runs istio-init as uid 0 with `capabilities: {drop: [ALL], add: [NET_ADMIN, NET_RAW]}`
and `allowPrivilegeEscalation: false`; here that is `ip netns exec POD setpriv --bounding-set
-all,+net_admin,+net_raw --inh-caps -all,+net_admin,+net_raw --no-new-privs -- meshnet ...`: the
process is *in* the pod namespace and cannot setns (no CAP_SYS_ADMIN), so everything must happen
in place. Every posture run is compared with the same flags applied by full root from outside
(`--network-namespace`, the path the rest of the suite proves) into a second pod: iptables-save
(both variants, both families), `nft list ruleset`, `ip rule`, the TPROXY table and lo's addresses
must be identical. Re-running is a no-op, `--cleanup-only` restores the pristine dumps.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.postures import (
    INJECTOR,
    INJECTOR_CAPEFF,
    ISTIO_INIT,
    MESHNET,
    NO_CAPS,
    PROXY_UID,
    TPROXY,
    dump,
    in_pod,
    istio_iptables,
    ok,
    one_line_error,
)
from harness.topology import Topology, connect

from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns


def as_root_from_outside(ns: Netns, *flags: str, env: dict[str, str] | None = None) -> None:
    cp = subprocess.run([*MESHNET, "istio-iptables", "--network-namespace", ns.label, *flags], capture_output=True,
                        text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    assert cp.returncode == 0, cp.stderr


def without_nft(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if k != "nft"}


@pytest.fixture
def pods() -> Iterator[tuple[Topology, Topology]]:
    """The pod under test and a reference pod, both dual-stack addressed (IPv4 first)."""
    with Topology() as pod, Topology() as ref:
        yield pod, ref


@pytest.fixture
def resolv_conf(tmp_path: Path) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.96.0.10\nnameserver fd00:96::a\nsearch default.svc.cluster.local\n")
    return str(path)


def test_the_posture_is_the_injectors(pods: tuple[Topology, Topology]) -> None:
    """The wrapper really drops everything but NET_ADMIN + NET_RAW and sets no_new_privs."""
    status = ok(in_pod(pods[0].pod, ["grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)", "/proc/self/status"]))
    assert f"CapEff:\t{INJECTOR_CAPEFF}" in status and f"CapBnd:\t{INJECTOR_CAPEFF}" in status, status
    assert "NoNewPrivs:\t1" in status, status
    setns = in_pod(pods[0].pod, ["nsenter", f"--net=/run/netns/{pods[0].pod.label}", "--", "true"])
    assert setns.returncode != 0 and "Operation not permitted" in setns.stderr  # what used to break istio-init


CASES = {
    "redirect": (ISTIO_INIT, {}),
    "tproxy-dual-stack": (TPROXY, {"ISTIO_DUAL_STACK": "true"}),
    "dns-capture": (ISTIO_INIT, {"ISTIO_META_DNS_CAPTURE": "true"}),
    "native-nftables": ([*ISTIO_INIT, "--native-nftables"], {}),
    "native-nftables-tproxy-dual-stack": ([*TPROXY, "--native-nftables"], {"ISTIO_DUAL_STACK": "true"}),
    "iptables-legacy": ([*ISTIO_INIT, "--force-iptables-binary", "legacy"], {}),
    "tproxy-legacy": ([*TPROXY, "--force-iptables-binary", "legacy"], {}),
}


@pytest.mark.parametrize("case", CASES)
def test_injector_posture_applies_what_root_applies(pods: tuple[Topology, Topology], resolv_conf: str,
                                                    case: str) -> None:
    """Same rules as root from outside; re-run is a no-op; --cleanup-only gives the pristine namespace back."""
    pod, ref = pods[0].pod, pods[1].pod
    flags, extra = CASES[case]
    env = {**extra, "MESHNET_RESOLV_CONF": resolv_conf}
    pristine = dump(pod)
    first = ok(istio_iptables(pod, *flags, env=env))
    assert "applied" in first and " in current" in first, first
    as_root_from_outside(ref, *flags, env=env)
    applied = dump(pod)
    assert applied == dump(ref)
    assert applied != pristine
    again = ok(istio_iptables(pod, *flags, env=env))
    assert "already applied" in again and "no change" in again, again
    assert dump(pod) == applied
    ok(istio_iptables(pod, "--cleanup-only"))
    assert dump(pod) == pristine


def test_what_the_cases_hold(pods: tuple[Topology, Topology], resolv_conf: str) -> None:
    """Spot checks with the tools' own words, so the equality above cannot pass on two empty dumps."""
    pod = pods[0].pod
    ok(istio_iptables(pod, *TPROXY, env={"ISTIO_DUAL_STACK": "true"}))
    d = dump(pod)
    assert "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 " \
           "--tproxy-mark 0x539/0xffffffff" in d["iptables-nft-save"], d["iptables-nft-save"]
    assert "-j TPROXY --on-port 15006 --on-ip ::" in d["ip6tables-nft-save"]
    assert d["ip rule"].count("fwmark 0x539 lookup 133") == 2, d["ip rule"]
    assert d["table 133"].count("local default dev lo") == 2, d["table 133"]
    assert "::6/128" in d["lo"].split(), d["lo"]
    ok(istio_iptables(pod, "--cleanup-only"))
    ok(istio_iptables(pod, *ISTIO_INIT, env={"ISTIO_META_DNS_CAPTURE": "true", "MESHNET_RESOLV_CONF": resolv_conf}))
    d = dump(pod)
    assert "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in \
        d["iptables-nft-save"], d["iptables-nft-save"]
    assert "-A ISTIO_INBOUND -s 10.96.0.10/32 -p udp -m udp --sport 53 -j CT --zone 1" in d["iptables-nft-save"]
    ok(istio_iptables(pod, "--cleanup-only"))
    ok(istio_iptables(pod, *ISTIO_INIT, "--native-nftables"))
    assert "table inet istio-proxy-nat" in dump(pod)["nft"]


def test_reconcile_in_posture(pods: tuple[Topology, Topology]) -> None:
    pod, ref = pods[0].pod, pods[1].pod
    ok(istio_iptables(pod, *ISTIO_INIT))
    changed = [*ISTIO_INIT[:-1], "15090", "-q", "80,443"]
    before = dump(pod)
    line = one_line_error(istio_iptables(pod, *changed), 1)
    assert "differ from the spec" in line and "--reconcile" in line, line
    assert dump(pod) == before  # a refused run changes nothing
    assert "reconciled" in ok(istio_iptables(pod, *changed, "--reconcile"))
    as_root_from_outside(ref, *changed)
    # `nft list` orders iptables-nft's chains by creation, which reconcile changes: compare iptables-save
    assert without_nft(dump(pod)) == without_nft(dump(ref))
    # nftables: one transaction swaps REDIRECT for TPROXY, routing included
    ok(istio_iptables(pod, "--cleanup-only"))
    ok(istio_iptables(pod, *ISTIO_INIT, "--native-nftables"))
    assert "replaced" in ok(istio_iptables(pod, *TPROXY, "--native-nftables", "--reconcile"))
    ok(istio_iptables(ref, "--cleanup-only"))
    as_root_from_outside(ref, *TPROXY, "--native-nftables")
    assert dump(pod) == dump(ref)


def test_redirect_traffic_lands_on_the_sidecar_in_posture(topology: Topology) -> None:
    """After the posture run, real TCP both ways lands on a uid-1337 fake sidecar with its original destination;
    the sidecar's own traffic goes out untouched."""
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    topology.start_server(topology.pod, "proxy", tcp_ports=[15001, 15006], uid=PROXY_UID)
    topology.start_server(topology.peer, "peer", tcp_ports=[80])
    inbound = connect(topology.peer, topology.pod_ip4, 8080)
    assert inbound.get("name") == "proxy" and inbound["listener_port"] == 15006, inbound
    assert inbound["orig_dst"] == [topology.pod_ip4, 8080], inbound
    outbound = connect(topology.pod, topology.peer_ip4, 80, uid=1000)
    assert outbound.get("name") == "proxy" and outbound["listener_port"] == 15001, outbound
    assert outbound["orig_dst"] == [topology.peer_ip4, 80], outbound
    own = connect(topology.pod, topology.peer_ip4, 80, uid=PROXY_UID)
    assert own.get("name") == "peer" and own["orig_dst"] is None, own
    excluded = connect(topology.peer, topology.pod_ip4, 15020)  # -d: inbound ports left alone
    assert excluded.get("error") == "refused", excluded


def test_legacy_lock_with_a_read_only_run(topology: Topology) -> None:
    """iptables-legacy needs its lock file; with /run read-only (readOnlyRootFilesystem) the default
    /run/xtables.lock cannot be opened, so meshnet locks the namespace's own nsfs file instead."""
    ro_run = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o ro,size=64k mn-ro-run /run && exec "$@"', "sh"]
    legacy = in_pod(topology.pod, ["iptables-legacy-restore", "--wait=5", "--noflush"], wrap=ro_run,
                    input="*nat\nCOMMIT\n")
    assert legacy.returncode == 4 and "lock file" in legacy.stderr, legacy.stderr  # the bare tool fails here
    cp = in_pod(topology.pod, [*MESHNET, "istio-iptables", *ISTIO_INIT, "--force-iptables-binary", "legacy"],
                wrap=ro_run)
    assert "applied 18 rules with iptables-legacy" in ok(cp)
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in dump(topology.pod)["iptables-legacy-save"]


@pytest.mark.parametrize("flags", [ISTIO_INIT, [*ISTIO_INIT, "--native-nftables"], ["--cleanup-only"],
                                   [*TPROXY, "--force-iptables-binary", "legacy"]], ids=str)
def test_without_net_admin_one_line_names_it(topology: Topology, flags: list[str]) -> None:
    before = dump(topology.pod)
    line = one_line_error(istio_iptables(topology.pod, *flags, posture=NO_CAPS), 1)
    assert line.startswith("istio-iptables: error: ") and "lacks CAP_NET_ADMIN" in line, line
    assert dump(topology.pod) == before


def test_status_json_as_seen_from_outside_after_posture_run(topology: Topology) -> None:
    ok(istio_iptables(topology.pod, *ISTIO_INIT))
    cp = subprocess.run([*MESHNET, "status", "--netns", topology.pod.label, *ISTIO_INIT, "--json"],
                        capture_output=True, text=True, timeout=60)
    doc = json.loads(cp.stdout)
    assert cp.returncode == 0 and doc["in_sync"] and doc["backends"] == ["iptables-nft"], (cp.stderr, doc)


@pytest.mark.parametrize("native", [False, True], ids=["iptables-nft", "nftables"])
def test_tproxy_dual_stack_traffic_in_posture(topology: Topology, native: bool) -> None:
    """TPROXY written in posture (mark rules, policy routing, ::6): inbound over IPv4 and IPv6 reaches the
    transparent sidecar with source and destination untouched, outbound is still REDIRECTed."""
    ok(istio_iptables(topology.pod, *TPROXY, *(["--native-nftables"] if native else []),
                      env={"ISTIO_DUAL_STACK": "true"}))
    topology.start_server(topology.pod, "proxy", tcp_ports=[15001, 15006], uid=PROXY_UID, transparent=True)
    for pod_ip, peer_ip in ((topology.pod_ip4, topology.peer_ip4), (topology.pod_ip6, topology.peer_ip6)):
        assert pod_ip and peer_ip
        inbound = connect(topology.peer, pod_ip, 8080)
        assert inbound.get("name") == "proxy" and inbound["listener_port"] == 15006, inbound
        assert inbound["local"] == [pod_ip, 8080] and inbound["peer"][0] == peer_ip, inbound
        outbound = connect(topology.pod, peer_ip, 80, uid=1000)
        assert outbound.get("name") == "proxy" and outbound["listener_port"] == 15001, outbound
        assert outbound["orig_dst"] == [peer_ip, 80], outbound


@pytest.mark.parametrize("flags", [ISTIO_INIT, ["--cleanup-only"], [*TPROXY, "--native-nftables"]], ids=str)
def test_another_namespace_needs_sys_admin_and_says_so(topology: Topology, flags: list[str]) -> None:
    """--network-namespace of another pod from the injector posture: setns/nsenter need CAP_SYS_ADMIN."""
    before = dump(topology.pod)
    cp = subprocess.run([*INJECTOR, *MESHNET, "istio-iptables", "--network-namespace", topology.pod.label, *flags],
                        capture_output=True, text=True, timeout=60)
    line = one_line_error(cp, 1)
    assert f"entering network namespace {topology.pod.label!r}" in line and "lacks CAP_SYS_ADMIN" in line, line
    assert dump(topology.pod) == before
