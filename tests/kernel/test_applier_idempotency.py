"""Idempotency and drift, including Istio's real-namespace cases (issue 3, "Safety").

Istio's tests reproduced: an equivalent re-run is a no-op; a rule added to a non-ISTIO chain is
not drift; a rule added to an ISTIO chain is drift; mixed IPv4/IPv6 residue is drift that
--reconcile repairs. Plus: a different spec fails with exit-1 style ApplyError naming the drift and
changes nothing; --reconcile replaces it and leaves no guardrail; --force-apply never writes over
existing chains.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.ns_state import DEFAULT, TPROXY_DNS, make_spec, snapshot
from harness.topology import Topology

from meshnet.apply.applier import apply_spec, cleanup, status
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError

pytestmark = pytest.mark.netns

BACKENDS = ("iptables-nft", "iptables-legacy", "iptc", "nftables")


@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        yield topo.pod


def _tool(backend: str, fam: int = 4) -> str:
    variant = "legacy" if backend in ("iptables-legacy", "iptc") else "nft"
    return f"{'ip6tables' if fam == 6 else 'iptables'}-{variant}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flags", (DEFAULT, TPROXY_DNS), ids=("redirect", "tproxy-dns"))
def test_equivalent_rerun_is_a_noop(pod: Netns, backend: str, flags: str) -> None:
    spec = make_spec(flags, pod)
    first = apply_spec(pod, spec, backend=backend)
    assert first.changed and first.backend == backend
    state = snapshot(pod)
    second = apply_spec(pod, spec, backend=backend)
    assert not second.changed, second
    assert snapshot(pod) == state
    assert status(pod, spec).drift == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_spec_is_drift_and_changes_nothing(pod: Netns, backend: str) -> None:
    apply_spec(pod, make_spec(DEFAULT, pod), backend=backend)
    state = snapshot(pod)
    other = make_spec(DEFAULT.replace("-p 15001", "-p 15009"), pod)
    with pytest.raises(ApplyError, match="differ from the spec.*15009") as err:
        apply_spec(pod, other, backend=backend)
    assert "--reconcile" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(pod) == state


@pytest.mark.parametrize("backend", BACKENDS)
def test_reconcile_replaces_drifted_rules_without_leftovers(pod: Netns, backend: str) -> None:
    apply_spec(pod, make_spec(TPROXY_DNS, pod), backend=backend)
    new = make_spec(DEFAULT.replace("-p 15001", "-p 15009"), pod)
    result = apply_spec(pod, new, backend=backend, reconcile=True)
    assert result.changed
    st = status(pod, new)
    assert st.drift == () and st.backends == (("iptables-legacy",) if backend == "iptc" else (backend,))
    assert not st.tproxy_routing  # the old TPROXY routing went with the old rules
    for fam in (4, 6):
        if backend != "nftables":
            saved = pod.run([f"{_tool(backend, fam)}-save"]).stdout
            assert "-j DROP" not in saved, "a reconcile guardrail was left behind"
            assert "mangle" not in saved or "ISTIO" not in saved.split("*mangle", 1)[1].split("COMMIT")[0]


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_rule_in_non_istio_chain_is_not_drift(pod: Netns, backend: str) -> None:
    spec = make_spec(DEFAULT, pod)
    apply_spec(pod, spec, backend=backend)
    pod.run([_tool(backend), "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"])
    pod.run([_tool(backend), "-t", "nat", "-N", "USER_CHAIN"])
    assert status(pod, spec).drift == ()
    assert not apply_spec(pod, spec, backend=backend).changed


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_rule_in_istio_chain_is_drift(pod: Netns, backend: str) -> None:
    spec = make_spec(DEFAULT, pod)
    apply_spec(pod, spec, backend=backend)
    pod.run([_tool(backend), "-t", "nat", "-A", "ISTIO_OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"])
    drift = status(pod, spec).drift
    assert any("ISTIO_OUTPUT" in line and "9999" in line for line in drift), drift
    with pytest.raises(ApplyError, match="9999"):
        apply_spec(pod, spec, backend=backend)
    apply_spec(pod, spec, backend=backend, reconcile=True)
    assert status(pod, spec).drift == ()


def test_rule_added_to_istio_nft_chain_is_drift(pod: Netns) -> None:
    spec = make_spec(DEFAULT, pod)
    apply_spec(pod, spec, backend="nftables")
    pod.run(["nft", "add rule inet istio-proxy-nat istio-output tcp dport 9999 counter return"])
    drift = status(pod, spec).drift
    assert any("9999" in line for line in drift), drift
    with pytest.raises(ApplyError, match="9999"):
        apply_spec(pod, spec, backend="nftables")


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_mixed_ipv4_ipv6_residue(pod: Netns, backend: str) -> None:
    """IPv4 rules from an earlier IPv4-only run, pod now dual-stack: IPv6 missing is drift."""
    dual = make_spec(DEFAULT, pod)
    assert dual.enable_ipv6
    apply_spec(pod, dual.with_changes(enable_ipv6=False), backend=backend)
    drift = status(pod, dual).drift
    assert any(line.startswith("- ip6tables") for line in drift), drift
    with pytest.raises(ApplyError, match="ip6tables"):
        apply_spec(pod, dual, backend=backend)
    apply_spec(pod, dual, backend=backend, reconcile=True)
    assert status(pod, dual).drift == ()
    # And the other way round: IPv6 residue only, for a dual-stack spec.
    cleanup(pod)
    v6_only = pod.run([f"{_tool(backend, 6)}-restore", "--noflush"],
                      input="*nat\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n")
    assert v6_only.returncode == 0
    with pytest.raises(ApplyError, match="ISTIO"):
        apply_spec(pod, dual, backend=backend)


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy", "nftables"))
def test_force_apply_never_writes_over_existing_chains(pod: Netns, backend: str) -> None:
    spec = make_spec(DEFAULT, pod)
    apply_spec(pod, spec, backend=backend)
    state = snapshot(pod)
    with pytest.raises(ApplyError, match="already exist"):
        apply_spec(pod, spec, backend=backend, force=True)
    assert snapshot(pod) == state
    assert apply_spec(pod, spec, backend=backend, force=True, reconcile=True).changed
    assert status(pod, spec).drift == ()


def test_missing_tproxy_routing_is_restored_on_rerun(pod: Netns) -> None:
    spec = make_spec(TPROXY_DNS, pod)
    apply_spec(pod, spec, backend="iptables-nft")
    pod.run(["ip", "rule", "del", "fwmark", "1337", "lookup", "133"])
    assert any("TPROXY routing" in line for line in status(pod, spec).drift)
    again = apply_spec(pod, spec, backend="iptables-nft")
    assert again.changed and "routing" in again.message
    assert status(pod, spec).drift == ()
