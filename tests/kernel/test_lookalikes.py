"""Cleanup and reconcile remove only what is Istio's (issue 10, defect 5), on the real kernel.

Look-alikes of what Istio writes outside its ISTIO_* chains (TPROXY policy routing, the TPROXY
mark plumbing in mangle, an excluded interface's `-i X -j RETURN` / `-o X -j RETURN`) belong to
someone else unless they have Istio's exact shape, Istio's mark (read from the live Istio rules or
the spec) and sit beside Istio's chains where Istio puts them. Each look-alike here must survive
`meshnet cleanup`, `istio-iptables --cleanup-only` and `apply --reconcile`, for iptables-nft and
iptables-legacy.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness.topology import Topology

from meshnet.apply.netns import Netns

pytestmark = pytest.mark.netns

REDIRECT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*"]
TPROXY = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*"]

# The reproduction, plus the rest of Istio's builtin-chain shapes with another mark or a
# place Istio never uses. No Istio chain exists when they are loaded.
LOOKALIKE_RULES = (
    ("mangle", "PREROUTING", "-p tcp -m mark --mark 0x1 -j CONNMARK --save-mark"),
    ("mangle", "MN_USER", "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark"),
    ("mangle", "OUTPUT", "-p tcp -o lo -m mark --mark 0x1 -j RETURN"),
    ("mangle", "OUTPUT", "-p tcp -m connmark --mark 0x1 -j CONNMARK --restore-mark"),
    ("nat", "PREROUTING", "-i eth1 -j RETURN"),
    ("nat", "OUTPUT", "-o eth1 -j RETURN"),
    ("mangle", "PREROUTING", "-i eth1 -j RETURN"),
    ("mangle", "OUTPUT", "-o eth1 -j RETURN"),
)


def meshnet(*args: str) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "meshnet.cli.main", *args], capture_output=True, text=True,
                        timeout=120, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
    return cp


def tool(variant: str, family: int, suffix: str = "") -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{variant}{suffix}"


def routing(ns: Netns) -> list[str]:
    return [ns.run(argv).stdout for argv in (["ip", "-4", "rule"], ["ip", "-6", "rule"],
                                              ["ip", "-4", "route", "show", "table", "all"],
                                              ["ip", "-6", "route", "show", "table", "all"])]


def rules(ns: Netns, variant: str) -> dict[int, list[str]]:
    return {fam: [ln for ln in ns.run([tool(variant, fam, "-save")]).stdout.splitlines()
                  if ln.startswith("-A ")] for fam in (4, 6)}


def state(ns: Netns, variant: str) -> tuple[list[str], dict[int, list[str]]]:
    return routing(ns), rules(ns, variant)


@pytest.fixture
def pod(variant: str) -> Iterator[Topology]:
    with Topology(ipv6=True, extra_pod_ifaces=["eth1"]) as topo:
        ns = topo.pod
        for fam in (4, 6):
            ns.run([tool(variant, fam), "-w", "10", "-t", "mangle", "-N", "MN_USER"])
            for table, chain, args in LOOKALIKE_RULES:
                ns.run([tool(variant, fam), "-w", "10", "-t", table, "-A", chain, *args.split()])
        for ip_fam, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
            ns.run(["ip", ip_fam, "rule", "add", "fwmark", "0x1", "lookup", "100"])
            ns.run(["ip", ip_fam, "route", "add", "local", default, "dev", "lo", "table", "100"])
            # Istio's own table and mark, but not Istio's shape: a mask, an input interface.
            ns.run(["ip", ip_fam, "rule", "add", "fwmark", "0x539/0xff", "lookup", "133"])
            ns.run(["ip", ip_fam, "rule", "add", "fwmark", "0x539", "iif", "eth1", "lookup", "133"])
            ns.run(["ip", ip_fam, "route", "add", "local", default, "dev", "lo", "table", "133"])
        yield topo


def test_cleanup_without_istio_rules_leaves_every_lookalike(pod: Topology, variant: str) -> None:
    before = state(pod.pod, variant)
    out = meshnet("cleanup", "--netns", pod.pod.path).stdout
    assert "nothing to remove" in out, out
    assert state(pod.pod, variant) == before
    meshnet("istio-iptables", "--network-namespace", pod.pod.path, "--cleanup-only", *TPROXY)
    assert state(pod.pod, variant) == before


def drop_interface_lookalikes(ns: Netns, variant: str) -> None:
    """An excluded interface's pair right before Istio's rules is exactly what `-c eth1` writes: with
    Istio present it cannot be told from Istio's (see the next test for one that can)."""
    for fam in (4, 6):
        for table, chain, args in LOOKALIKE_RULES:
            if "eth1" in args:
                ns.run([tool(variant, fam), "-w", "10", "-t", table, "-D", chain, *args.split()])


@pytest.mark.parametrize("flags", [REDIRECT, TPROXY], ids=["REDIRECT", "TPROXY"])
def test_apply_reconcile_and_cleanup_beside_lookalikes(pod: Topology, variant: str, flags: list[str]) -> None:
    ns, backend = pod.pod, f"iptables-{variant}"
    drop_interface_lookalikes(ns, variant)
    before_routing, before_rules = state(ns, variant)
    meshnet("apply", "--netns", ns.path, "--backend", backend, *flags)
    meshnet("apply", "--netns", ns.path, "--backend", backend, "--reconcile", *flags, "-b", "8080")
    live_routing = routing(ns)
    for fam in (4, 6):
        live = rules(ns, variant)[fam]
        assert all(r in live for r in before_rules[fam]), [r for r in before_rules[fam] if r not in live]
    assert "fwmark 0x1 lookup 100" in live_routing[0] and "fwmark 0x1 lookup 100" in live_routing[1], live_routing
    if flags is TPROXY:  # Istio's own routing is there beside the look-alikes
        assert "fwmark 0x539 lookup 133" in live_routing[0]
    meshnet("cleanup", "--netns", ns.path)
    assert state(ns, variant) == (before_routing, before_rules)


def test_istios_excluded_interface_goes_and_a_later_twin_stays(pod: Topology, variant: str) -> None:
    """With Istio's rules present, a user's `-i eth1/-o eth1 -j RETURN` appended after Istio's jump is
    not Istio's (Istio writes its pair before the jump); Istio's own pair is removed."""
    ns, backend = pod.pod, f"iptables-{variant}"
    drop_interface_lookalikes(ns, variant)
    before = state(ns, variant)
    meshnet("apply", "--netns", ns.path, "--backend", backend, *REDIRECT, "-c", "eth1", "--dual-stack")
    for fam in (4, 6):
        for chain, opt in (("PREROUTING", "-i"), ("OUTPUT", "-o")):
            ns.run([tool(variant, fam), "-w", "10", "-t", "nat", "-A", chain, opt, "eth1", "-j", "RETURN"])
    twins = {fam: [r for r in rules(ns, variant)[fam] if "eth1 -j RETURN" in r and "ISTIO" not in r]
             for fam in (4, 6)}
    assert all(len(t) >= 4 for t in twins.values()), twins  # nat: Istio's pair + the user's
    meshnet("cleanup", "--netns", ns.path)
    after_routing, after_rules = state(ns, variant)
    assert after_routing == before[0]
    for fam in (4, 6):
        extra = [r for r in after_rules[fam] if r not in before[1][fam]]
        assert sorted(extra) == ["-A OUTPUT -o eth1 -j RETURN", "-A PREROUTING -i eth1 -j RETURN"], extra


def test_orphan_istio_routing_in_istios_exact_shape_is_removed(pod: Topology, variant: str) -> None:
    """`fwmark 0x539 lookup 133` + `local default dev lo table 133` with no rules left (an interrupted
    run): Istio's defaults, exact shape, so cleanup removes it; the look-alikes beside it stay."""
    ns = pod.pod
    before = state(ns, variant)
    ns.run(["ip", "-4", "rule", "add", "fwmark", "0x539", "lookup", "134"])  # Istio's mark, another table
    ns.run(["ip", "-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "134"])
    ns.run(["ip", "-4", "rule", "add", "fwmark", "0x539", "lookup", "133"])
    meshnet("cleanup", "--netns", ns.path)
    now_routing, now_rules = state(ns, variant)
    assert now_rules == before[1]
    assert "fwmark 0x539 lookup 133" not in now_routing[0].replace("0x539/0xff", "")
    assert "fwmark 0x539 lookup 134" in now_routing[0]  # not Istio's pair, and no live Istio rule uses 0x539
    assert "fwmark 0x1 lookup 100" in now_routing[0] and "fwmark 0x539/0xff lookup 133" in now_routing[0]
    assert "iif eth1" in now_routing[0]


@pytest.mark.parametrize("flags", [REDIRECT, TPROXY], ids=["REDIRECT", "TPROXY"])
def test_cleanup_only_with_istios_flags_keeps_every_lookalike(pod: Topology, variant: str,
                                                              flags: list[str]) -> None:
    """`istio-iptables --cleanup-only` knows the config: no `-c eth1`, so the eth1 RETURN pairs that sit
    right above Istio's jumps are not Istio's; everything else of Istio's goes, all look-alikes stay."""
    ns = pod.pod
    before = state(ns, variant)
    meshnet("istio-iptables", "--network-namespace", ns.path, *flags)  # auto: where the look-alikes are
    assert any("ISTIO_OUTPUT" in r for r in rules(ns, variant)[4])
    meshnet("istio-iptables", "--network-namespace", ns.path, "--cleanup-only", *flags)
    assert state(ns, variant) == before
