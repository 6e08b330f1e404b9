"""Ambient rules load into a real kernel and read back as the model they were built from.

Every ambient configuration (the 14 of Istio's tests, in-pod and host) with iptables-legacy,
iptables-nft (both families) and `nft -f`; the live state parsed by meshnet's iptables-save and
nft JSON parsers compares equal to the plan (`diff` / drift empty). Host rules go into the
test's own namespace, with the probe ipsets / nft sets created there first, as the node agent does.
"""

from __future__ import annotations

import pytest
from harness.ambient_cases import AMBIENT_CASES, AmbientCase
from harness.topology import Topology

from meshnet.ambient.nft_builder import build_host_nft, build_inpod_nft
from meshnet.ambient.spec import PROBE_IPSET
from meshnet.ambient.xt_builder import build_host, build_inpod
from meshnet.apply.backends import nftables
from meshnet.apply.netns import Netns
from meshnet.plan.nft_model import AMBIENT_PREFIX
from meshnet.plan.render_nft import render_nft
from meshnet.plan.render_restore import render_family
from meshnet.state.compare import diff_rulesets
from meshnet.state.parse_save import parse_save

pytestmark = pytest.mark.netns


def _tool(family: int, variant: str, what: str) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{variant}-{what}"


def _ipsets(ns: Netns) -> None:
    ns.run(["ipset", "create", f"{PROBE_IPSET}-v4", "hash:ip"])
    ns.run(["ipset", "create", f"{PROBE_IPSET}-v6", "hash:ip", "family", "inet6"])


@pytest.mark.parametrize("variant", ["legacy", "nft"])
@pytest.mark.parametrize("case", AMBIENT_CASES, ids=lambda c: c.name)
def test_restore_loads_and_parses_back_equal(case: AmbientCase, variant: str, topology: Topology) -> None:
    ns = topology.pod
    if case.host:
        _ipsets(ns)
    plan = (build_host if case.host else build_inpod)(case.spec("iptables"))
    for fam in plan.families():
        res = ns.run([_tool(fam, variant, "restore"), "--noflush"], input=render_family(plan, fam), check=False)
        assert res.returncode == 0, res.stderr
        live = parse_save(ns.run([_tool(fam, variant, "save")]).stdout, fam)
        assert diff_rulesets(plan.ruleset(fam), live).lines() == []
        # The parsed live rules are the built ones, rule for rule, in kernel order.
        for table in plan.ruleset(fam).tables.values():
            for chain in table.chains.values():
                assert [r.key() for r in live.rules(table.name, chain.name)] == [r.key() for r in chain.rules]


def _nft_sets(enable_ipv6: bool) -> str:
    text = f"add table inet {AMBIENT_PREFIX}nat\n"
    text += f"add set inet {AMBIENT_PREFIX}nat {PROBE_IPSET}-v4 {{ type ipv4_addr ; }}\n"
    if enable_ipv6:
        text += f"add set inet {AMBIENT_PREFIX}nat {PROBE_IPSET}-v6 {{ type ipv6_addr ; }}\n"
    return text


@pytest.mark.parametrize("case", AMBIENT_CASES, ids=lambda c: c.name)
def test_nft_transaction_loads_and_parses_back_equal(case: AmbientCase, topology: Topology) -> None:
    ns = topology.pod
    spec = case.spec("nftables")
    plan = build_host_nft(spec) if case.host else build_inpod_nft(spec)
    text = render_nft(plan)
    if case.host:
        ns.run(["nft", "-f", "-"], input=_nft_sets(spec.enable_ipv6))
    res = ns.run(["nft", "-f", "-"], input=text, check=False)
    assert res.returncode == 0, res.stderr
    live = nftables.live(ns, AMBIENT_PREFIX)
    assert nftables.drift(plan, live) == []
    assert not live.unsupported()
    # The same transaction again is idempotent (add + flush), as Istio relies on.
    listing = ns.run(["nft", "-s", "list", "ruleset"]).stdout
    assert ns.run(["nft", "-f", "-"], input=text, check=False).returncode == 0
    assert ns.run(["nft", "-s", "list", "ruleset"]).stdout == listing


def test_drift_is_seen_on_ambient_rules(topology: Topology) -> None:
    """A changed live rule is reported, in both parsers (the comparison is not vacuous)."""
    ns = topology.pod
    case = next(c for c in AMBIENT_CASES if c.name == "default")
    plan = build_inpod(case.spec("iptables"))
    ns.run(["iptables-nft-restore", "--noflush"], input=render_family(plan, 4))
    ns.run(["iptables-nft", "-t", "mangle", "-R", "ISTIO_PRERT", "1", "-m", "mark", "--mark", "0x538/0xfff",
            "-j", "CONNMARK", "--set-xmark", "0x111/0xfff"])
    lines = diff_rulesets(plan.ruleset(4), parse_save(ns.run(["iptables-nft-save"]).stdout, 4)).lines()
    assert any(line.startswith("-") and "0x539/0xfff" in line for line in lines), lines
    assert any(line.startswith("+") and "1336/0xfff" in line for line in lines), lines
    nplan = build_inpod_nft(case.spec("nftables"))
    ns.run(["nft", "-f", "-"], input=render_nft(nplan))
    ns.run(["nft", "flush", "chain", "inet", f"{AMBIENT_PREFIX}raw", "istio-output"])
    ns.run(["nft", "add", "rule", "inet", f"{AMBIENT_PREFIX}raw", "istio-output", "udp", "dport", "53", "meta", "mark",
            "and", "0xfff", "==", "0x538", "counter", "ct", "zone", "set", "1"])
    drift = nftables.drift(nplan, nftables.live(ns, AMBIENT_PREFIX))
    assert len(drift) == 2 and drift[0].startswith("- ") and drift[1].startswith("+ "), drift
