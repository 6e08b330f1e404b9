"""Unit layer of the bad-value rules (the kernel layer is tests/kernel/test_bad_values.py)."""

from __future__ import annotations

import pytest

from meshnet.cni.inputs import is_own_netns
from meshnet.errors import SpecError, one_line, quote
from meshnet.spec import values as v
from meshnet.spec.spec import Spec
from meshnet.spec.yaml_file import nesting_depth, spec_from_mapping


@pytest.mark.parametrize("table", [1, 133, 252])
def test_route_tables_outside_the_kernels_own_are_accepted(table: int) -> None:
    assert v.parse_route_table("t", str(table)) == table
    assert Spec(mode="TPROXY", tproxy_route_table=table).tproxy_route_table == table


@pytest.mark.parametrize("table", [0, 253, 254, 255, 256, 2**32 - 1, -1, "", "0x85", "1e2", "١٣٣", True, "9" * 5000])
def test_reserved_and_malformed_route_tables_are_refused(table: object) -> None:
    with pytest.raises(SpecError, match="routing table between 1 and 252"):
        v.parse_route_table("t", table)  # type: ignore[arg-type]  # the point: refused at run time
    with pytest.raises(SpecError):
        Spec(tproxy_route_table=table)  # type: ignore[arg-type]  # the point: refused at run time


def test_marks_and_ids() -> None:
    with pytest.raises(SpecError):
        Spec(tproxy_mark=0)
    assert Spec(proxy_uids=("4294967294",)).proxy_uids == ("4294967294",)
    for uid in ("4294967295", "4294967296", "99999999999"):
        with pytest.raises(SpecError, match="between 0 and 4294967294"):
            v.parse_owners("--proxy-uid", uid)
    with pytest.raises(SpecError, match="between 0 and 4294967294"):
        spec_from_mapping({"proxy_uids": [4294967296]})


@pytest.mark.parametrize("value", ["fe80::1%eth0", "::1%lo", "fe80::1%1"])
def test_zoned_addresses_are_refused(value: str) -> None:
    with pytest.raises(SpecError, match="zone id"):
        v.parse_ip("dns", value)
    with pytest.raises(SpecError, match="zone id"):
        v.format_cidr("cidr", value + "/64")
    with pytest.raises(SpecError, match="zone id"):
        Spec(redirect_dns=True, dns_servers_v6=(value,))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e308, -1, "soon", None, True])
def test_durations_are_finite_and_bounded(value: object) -> None:
    with pytest.raises(SpecError):
        v.parse_seconds("--interval", value)


@pytest.mark.parametrize("value", [True, False, None, b"1", [1], "soon"])
def test_durations_that_are_no_number_say_so(value: object) -> None:
    # A bool used to be read as nan ("must be a finite number"); bytes and lists were left to float().
    with pytest.raises(SpecError, match="expected a number of seconds"):
        v.parse_seconds("--interval", value)


def test_durations_zero_only_when_allowed() -> None:
    assert v.parse_seconds("--interval", 0) == 0
    assert v.parse_seconds("--duration", 2.5, allow_zero=False) == 2.5
    with pytest.raises(SpecError, match="> 0"):
        v.parse_seconds("--duration", 0, allow_zero=False)


def test_values_are_quoted_to_80_characters_and_messages_are_one_line() -> None:
    huge = "x" * 100_000
    assert quote("short") == "'short'"
    assert len(quote(huge)) < 120 and "100000 characters" in quote(huge)
    err = SpecError("--istio-service-cidr", huge, "not a CIDR")
    assert len(str(err)) < 200
    assert one_line("a\nb\n\nc") == "a; b; c"
    assert len(one_line(huge)) < 1100


def test_nesting_depth_sees_brackets_and_indentation() -> None:
    assert nesting_depth("mode: TPROXY\nproxy_uids: [1337]\n") <= 2
    assert nesting_depth("[" * 100) == 100
    assert nesting_depth("".join("  " * i + f"k{i}:\n" for i in range(80))) >= 40


def test_own_namespace_is_recognised_by_identity() -> None:
    assert is_own_netns("/proc/self/ns/net")
    assert is_own_netns("/proc/thread-self/ns/net")
    assert not is_own_netns("/proc/self/ns/mnt")
    assert not is_own_netns("/nonexistent")
