"""meshnet.apply.repair without a runtime: the decision per sandbox, the config lookup, the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.cni_helpers import SIDECAR

from meshnet.apply.applier import Status
from meshnet.apply.repair import Row, classify, exit_code, load_config, repair_all, repair_pod
from meshnet.cni.config import parse_config
from meshnet.errors import MeshnetError
from meshnet.spec.spec import Spec

CONFIG = parse_config({"cniVersion": "1.0.0"})


def _sandbox(name: str, namespace: str = "shop", annotations: dict[str, str] | None = None,
             netns: str | None = "/nonexistent/netns", labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"id": f"id-{name}", "name": name, "namespace": namespace, "annotations": annotations or {},
            "labels": labels or {}, "netns": netns}


@pytest.mark.parametrize(("sandbox", "action"), [
    (_sandbox("a", "kube-system", SIDECAR), "skipped"),
    (_sandbox("b", annotations={}), "skipped"),
    (_sandbox("c", annotations={**SIDECAR, "sidecar.istio.io/inject": "false"}), "skipped"),
    (_sandbox("d", annotations=SIDECAR, labels={"sidecar.istio.io/inject": "false"}), "skipped"),
    (_sandbox("e", annotations={**SIDECAR, "sidecar.istio.io/interceptionMode": "SOMETIMES"}), "invalid"),
    (_sandbox("f", annotations={**SIDECAR, "traffic.sidecar.istio.io/includeInboundPorts": "x"}), "invalid"),
    (_sandbox("g", annotations=SIDECAR), "gone"),  # its namespace is not there (deleted meanwhile)
    (_sandbox("h", annotations=SIDECAR, netns=None), "gone"),
])
def test_each_sandbox_is_decided_as_cni_add_would(sandbox: dict[str, object], action: str) -> None:
    row = repair_pod(sandbox, CONFIG, dry_run=False, allow_change=True)
    assert row.action == action, row
    assert row.detail  # every outcome but ok says why


def test_labels_from_the_runtime_do_not_count_as_istio_labels() -> None:
    row = repair_pod(_sandbox("i", annotations=SIDECAR, labels={"io.kubernetes.pod.name": "i"}), CONFIG,
                     dry_run=True, allow_change=True)
    assert row.action == "gone"  # decided to mesh it (then found no namespace), not skipped


def test_a_failure_on_a_pod_no_longer_ready_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshnet.apply.repair as repair

    monkeypatch.setattr(repair, "_repair_pod", lambda *a, **k: Row("shop/x", "id-x", "/p", "failed", "", ["boom"]))
    assert repair_pod({}, CONFIG, dry_run=False, allow_change=True, still_ready=lambda sid: False).action == "gone"
    assert repair_pod({}, CONFIG, dry_run=False, allow_change=True, still_ready=lambda sid: True).action == "failed"


def test_classify() -> None:
    # classify reads the namespace only to look for a half-written iptables family, which none of these
    # states reaches: no Netns (hence the ignores)
    spec = Spec(inbound_ports_wildcard=True)
    ok = Status(("iptables-nft",), (), False, False, True)
    assert classify(None, spec, ok) is None  # type: ignore[arg-type]
    assert classify(None, spec, Status((), ("~ no Istio rules installed",), False, False, True)) == "missing"  # type: ignore[arg-type]
    routing = Status(("nftables",), ("~ TPROXY routing missing: ip rule fwmark 1337 lookup 133",), False, False, True)
    assert classify(None, spec, routing) == "partial"  # type: ignore[arg-type]
    changed = Status(("nftables",), ("- nft inet istio-proxy-nat ...",), False, False, True)
    assert classify(None, spec, changed) == "drift"  # type: ignore[arg-type]


def test_exit_code_and_limit() -> None:
    assert exit_code([Row("a", "", "", "ok"), Row("b", "", "", "repaired"), Row("c", "", "", "skipped")]) == 0
    for action in ("would-repair", "invalid", "busy", "deferred", "failed"):
        assert exit_code([Row("a", "", "", action)]) == 1
    rows = repair_all([_sandbox("a", "kube-system", SIDECAR)] * 3, CONFIG, max_repairs=0)
    assert [r.action for r in rows] == ["skipped"] * 3


def test_config_comes_from_the_conflist_or_defaults(tmp_path: Path) -> None:
    conflist = tmp_path / "10-x.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "bridge"}, {"type": "meshnet-cni", "exclude_namespaces": ["infra"], "backend": "iptables-nft"}]}))
    found = load_config(None, str(tmp_path))
    assert found.exclude_namespaces == ("infra",) and found.backend == "iptables-nft"
    assert load_config(str(conflist), None) == found
    assert load_config(None, str(tmp_path / "none")).exclude_namespaces == ("kube-system",)
    other = tmp_path / "other.conflist"
    other.write_text(json.dumps({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}))
    with pytest.raises(MeshnetError, match="has no meshnet-cni plugin"):
        load_config(str(other), None)
    broken = tmp_path / "broken.conflist"
    broken.write_text("{not json")
    with pytest.raises(MeshnetError, match="cannot read"):
        load_config(str(broken), None)
