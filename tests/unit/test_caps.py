"""meshnet.apply.caps: reading CapEff and wording what is missing (unit level; the real postures are in
test_pod_postures.py, test_validation_in_pod.py and test_diag_in_pod.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.apply import caps
from meshnet.errors import CapabilityError

INJECTOR_MASK = 1 << 12 | 1 << 13  # NET_ADMIN + NET_RAW, as `grep CapEff /proc/self/status` shows 0x3000


def test_effective_reads_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\n")
    assert caps.effective(str(status)) == INJECTOR_MASK
    assert caps.effective(str(tmp_path / "missing")) == 0
    status.write_text("CapEff:\tnot-hex\n")
    assert caps.effective(str(status)) == 0


def test_missing_keeps_the_order_asked() -> None:
    needs = [caps.NET_ADMIN, caps.NET_RAW, caps.SYS_ADMIN]
    assert caps.missing(needs, INJECTOR_MASK) == [caps.SYS_ADMIN]
    assert caps.missing(needs, 0) == needs
    assert caps.missing(needs, (1 << 41) - 1) == []


def test_require_raises_one_line_exit_2() -> None:
    with pytest.raises(CapabilityError) as ei:
        caps.require("entering network namespace 'x'", [caps.SYS_ADMIN], mask=INJECTOR_MASK)
    assert ei.value.exit_code == 2
    assert str(ei.value) == "entering network namespace 'x' needs CAP_SYS_ADMIN; this process lacks CAP_SYS_ADMIN"
    caps.require("reading", [caps.NET_ADMIN, caps.NET_RAW], mask=INJECTOR_MASK)  # nothing missing: no error
    assert caps.message("x", [caps.NET_ADMIN, caps.NET_RAW, caps.SYS_ADMIN], [caps.NET_ADMIN, caps.NET_RAW]) == \
        "x needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN; this process lacks CAP_NET_ADMIN and CAP_NET_RAW"


@pytest.mark.parametrize(("stderr", "refused"), [
    ("iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)", True),
    ("Operation not permitted (you must be root)\nnetlink: Error: cache initialization failed", True),
    ("conntrack v1.4.7: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability", True),
    ("iptables-restore: line 3 failed", False),
    ("", False),
])
def test_denied_recognises_the_tools_wording(stderr: str, refused: bool) -> None:
    assert caps.denied(stderr) is refused
