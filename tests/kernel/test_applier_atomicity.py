"""Atomicity: a failure anywhere leaves the namespace exactly as it was (issue 3, "Safety").

Faults are real: a restore binary that fails or is SIGKILLed (a wrapper first in PATH), a missing
binary (PATH without it), a bad line the kernel/tool rejects in the v6 payload, an nft transaction
with a rule the kernel refuses. The comparison covers iptables-save and ip6tables-save of both
variants, `nft list ruleset`, `ip rule` / `ip route show table all` for both families and lo's
addresses. `snapshot()` is shared with the cleanup tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from harness.ns_state import DEFAULT, TPROXY_DNS, XT_BACKENDS, add_user_state, make_spec, snapshot
from harness.ns_state import wrapper_dir as _wrapper_dir
from harness.topology import Topology

from meshnet.apply.applier import apply_spec, status
from meshnet.apply.netns import Netns
from meshnet.errors import ApplyError
from meshnet.plan.model import Family, IptablesPlan, Op

pytestmark = pytest.mark.netns



@pytest.fixture
def pod() -> Iterator[Netns]:
    with Topology() as topo:
        yield topo.pod



def _restore_name(backend: str, fam: int) -> str:
    variant = "legacy" if backend in ("iptables-legacy", "iptc") else "nft"
    return f"{'ip6tables' if fam == 6 else 'iptables'}-{variant}-restore"


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
@pytest.mark.parametrize("fault", ("exit 2", "kill -9 $$"))
def test_v6_restore_failure_rolls_back_v4_and_routes(pod: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     backend: str, fault: str) -> None:
    add_user_state(pod, backend)
    spec = make_spec(TPROXY_DNS, pod)
    assert spec.enable_ipv6
    before = snapshot(pod)
    wrapper = _wrapper_dir(tmp_path, _restore_name(backend, 6), f"cat >/dev/null\n{fault}")
    monkeypatch.setenv("PATH", f"{wrapper}:{os.environ['PATH']}")
    with pytest.raises(ApplyError) as err:
        apply_spec(pod, spec, backend=backend)
    assert "ip6tables" in str(err.value)
    monkeypatch.undo()
    assert snapshot(pod) == before


def test_missing_ip6tables_restore_binary_rolls_back(pod: Netns, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(TPROXY_DNS, pod)
    before = snapshot(pod)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    for tool in ("nsenter", "iptables-nft-restore", "iptables-nft-save", "ip6tables-nft-save", "nft", "ip"):
        found = shutil.which(tool)
        assert found, tool
        (sandbox / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(sandbox))
    with pytest.raises(ApplyError, match="ip6tables-nft-restore"):
        apply_spec(pod, spec, backend="iptables-nft")
    monkeypatch.undo()
    assert snapshot(pod) == before


@pytest.mark.parametrize("backend", XT_BACKENDS)
def test_bad_line_in_v6_payload_rolls_back_everything(pod: Netns, monkeypatch: pytest.MonkeyPatch,
                                                      backend: str) -> None:
    """ip6 nat/mangle/raw commit, then a later table is refused: all of v4 and v6 must go."""
    import meshnet.apply.backends.iptc_backend as iptc_backend
    import meshnet.plan.render_restore as restore

    add_user_state(pod, backend)
    spec = make_spec(TPROXY_DNS, pod)
    before = snapshot(pod)
    real_render, real_payload = restore.render_family, iptc_backend.ops_payload

    def bad_render(plan: IptablesPlan, family: Family) -> str:
        text = real_render(plan, family)
        return text + ("*filter\n-A INPUT -j NO_SUCH_TARGET_X\nCOMMIT\n" if family == 6 else "")

    def bad_payload(family: Family, ops: Sequence[Op]) -> str:
        text = real_payload(family, ops)
        if family == 6:
            text = text[:-2] + ', {"table": "filter", "chain": "INPUT", "position": null, "matches": [], ' \
                               '"target": ["NO_SUCH_TARGET_X"]}]}'
        return text

    monkeypatch.setattr(restore, "render_family", bad_render)
    monkeypatch.setattr(iptc_backend, "ops_payload", bad_payload)
    with pytest.raises(ApplyError):
        apply_spec(pod, spec, backend=backend)
    assert snapshot(pod) == before


def test_nft_transaction_with_bad_rule_changes_nothing(pod: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshnet.plan.render_nft as nft_render

    add_user_state(pod, "iptables-nft")
    spec = make_spec(TPROXY_DNS, pod)
    before = snapshot(pod)
    real = nft_render.render_nft
    monkeypatch.setattr(nft_render, "render_nft",
                        lambda plan: real(plan) + "add rule inet istio-proxy-nat output counter jump no-such-chain\n")
    with pytest.raises(ApplyError, match="nft"):
        apply_spec(pod, spec, backend="nftables")
    assert snapshot(pod) == before


def test_failed_nft_replace_keeps_the_old_tables(pod: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """--reconcile on nftables swaps tables in one transaction: a refused one leaves the old rules."""
    import meshnet.plan.render_nft as nft_render

    old = make_spec(DEFAULT, pod)
    apply_spec(pod, old, backend="nftables")
    before = snapshot(pod)
    real = nft_render.render_nft
    monkeypatch.setattr(nft_render, "render_nft",
                        lambda plan: real(plan) + "add rule inet istio-proxy-nat output counter jump no-such-chain\n")
    with pytest.raises(ApplyError):
        apply_spec(pod, make_spec(TPROXY_DNS, pod), backend="nftables", reconcile=True)
    monkeypatch.undo()
    assert snapshot(pod) == before
    assert status(pod, old).drift == ()


@pytest.mark.parametrize("backend", ("iptables-nft", "iptables-legacy"))
def test_failed_reconcile_restores_previous_rules_and_drops_guardrails(
        pod: Netns, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    import meshnet.plan.render_restore as restore

    old = make_spec(DEFAULT, pod)
    apply_spec(pod, old, backend=backend)
    before = snapshot(pod)
    real_render = restore.render_family
    monkeypatch.setattr(restore, "render_family", lambda plan, fam: real_render(plan, fam) + (
        "*filter\n-A INPUT -j NO_SUCH_TARGET_X\nCOMMIT\n" if fam == 6 else ""))
    with pytest.raises(ApplyError):
        apply_spec(pod, make_spec(TPROXY_DNS, pod), backend=backend, reconcile=True)
    monkeypatch.undo()
    after = snapshot(pod)
    for key in before:
        if "tables" in key:  # rules and user chains exactly as before; no guardrail left behind
            assert _rules(after[key]) == _rules(before[key]), key
            assert "-j DROP" not in after[key], f"guardrail left in {key}"
    assert status(pod, old).drift == ()


def _rules(save_text: str) -> list[str]:
    return [ln for ln in save_text.splitlines() if ln.startswith(("-A", "[")) or " - [" in ln]


def test_success_really_changes_state(pod: Netns) -> None:
    """Guard against a vacuous snapshot: a successful apply must show up in it."""
    before = snapshot(pod)
    apply_spec(pod, make_spec(TPROXY_DNS, pod), backend="iptables-nft")
    after = snapshot(pod)
    assert after["iptables-nft-save"] != before["iptables-nft-save"]
    assert after["ip -4 rule"] != before["ip -4 rule"]
    assert "::6" in after["lo"] and "::6" not in before["lo"]
