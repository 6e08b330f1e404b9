"""Round trip through the kernel for every shared golden case and both iptables backends:
render -> iptables-restore -> iptables-save -> parse (meshnet.state.live) == the builder's RuleSet.

The nft JSON round trip lives in test_parse_nft_json.py.
"""

from __future__ import annotations

import pytest
from harness.golden_cases import CASES, Case
from harness.topology import Topology

from meshnet.apply.backends import LEGACY, NFT
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.render_restore import render_family
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.resolvconf import parse_nameservers
from meshnet.spec.spec import Spec
from meshnet.state.compare import diff_rulesets
from meshnet.state.live import read_live

# iptables resolves owner group names at restore time; "java" does not exist on this machine.
NEEDS_JAVA_GROUP = {"outbound-owner-groups", "ipv6-dns-outbound-owner-groups"}
RESTORE = {LEGACY: "{}-legacy-restore", NFT: "{}-nft-restore"}


def spec_of(case: Case) -> Spec:
    spec, _ = parse_istio_args(case.argv(), env=case.env, enable_ipv6=case.ipv6,
                               dns_servers=parse_nameservers(case.resolv))
    return spec


@pytest.mark.netns
@pytest.mark.parametrize("backend", [LEGACY, NFT])
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in NEEDS_JAVA_GROUP], ids=lambda c: c.name)
def test_render_load_save_parse_is_identity(case: Case, backend: str) -> None:
    plan = build_iptables(spec_of(case))
    with Topology(ipv6=False) as topo:
        assert not topo.pod.is_current()
        for fam in plan.families():
            tool = RESTORE[backend].format("iptables" if fam == 4 else "ip6tables")
            topo.pod.run([tool, "--noflush"], input=render_family(plan, fam))
        live = read_live(topo.pod)
    assert live.errors == []
    other = NFT if backend == LEGACY else LEGACY
    assert live.istio_backends() == [backend]
    assert not live.has_istio(other)
    for fam in plan.families():
        diff = diff_rulesets(plan.ruleset(fam), live.ruleset(backend, fam))
        assert diff.empty, "\n".join(diff.lines())
        # Not only the ISTIO chains: the builtin chains hold exactly the rules Istio put there.
        for table, chain in [(t, c) for t, tb in plan.ruleset(fam).tables.items() for c in tb.chains]:
            assert [r.key() for r in live.ruleset(backend, fam).rules(table, chain)] == \
                [r.key() for r in plan.ruleset(fam).rules(table, chain)], (table, chain)


@pytest.mark.netns
def test_reading_never_creates_legacy_tables() -> None:
    """Reading live state from an nft-only namespace must not instantiate legacy tables."""
    plan = build_iptables(spec_of(next(c for c in CASES if c.name == "inbound-ports-wildcard")))
    with Topology(ipv6=False) as topo:
        topo.pod.run(["iptables-nft-restore", "--noflush"], input=render_family(plan, 4))
        before = topo.pod.read_proc_net("ip_tables_names")
        live = read_live(topo.pod)
        after = topo.pod.read_proc_net("ip_tables_names")
    assert live.istio_backends() == [NFT]
    assert before == after == ""
