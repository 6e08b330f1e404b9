"""Istio cases beyond the shared goldens, checked line by line against the reference (section 2)."""

from __future__ import annotations

from typing import Any

from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.nft_builder import build_nft
from meshnet.plan.render_nft import render_nft
from meshnet.plan.render_restore import render_family
from meshnet.spec.flags import parse_istio_args

BASE = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337"]
INJECTOR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]


def v4(flags: list[str], env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    spec, _ = parse_istio_args(BASE + flags, env=env or {}, **kw)
    return render_family(build_iptables(spec), 4).splitlines()


def test_injector_default_matches_reference_section_2_1() -> None:
    spec, _ = parse_istio_args(INJECTOR, env={})
    lines = render_family(build_iptables(spec), 4).splitlines()
    assert lines[lines.index("-A PREROUTING -p tcp -j ISTIO_INBOUND") + 1:][:4] == [
        "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]
    assert lines[-2:] == ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "COMMIT"]
    # gid defaults to the uid when -g is absent (the injector never passes -g)
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN" in lines


def test_owner_groups_exclude_returns_each_group() -> None:
    lines = v4([], env={"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"})
    idx = lines.index("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN")
    assert lines[idx + 1:idx + 3] == ["-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN",
                                      "-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN"]


def test_owner_groups_exclude_ignored_when_include_is_a_list() -> None:
    lines = v4([], env={"ISTIO_OUTBOUND_OWNER_GROUPS": "java", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"})
    assert "-A ISTIO_OUTPUT -m owner ! --gid-owner java -j RETURN" in lines
    assert not any("--gid-owner 888" in line for line in lines)


def test_ipnets_with_kube_virt_interfaces_inserts_per_cidr() -> None:
    lines = v4(["-i", "10.0.0.0/8,172.16.0.0/16", "-k", "eth1"])
    assert lines[-5:-1] == [
        "-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-I PREROUTING 1 -i eth1 -d 172.16.0.0/16 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 172.16.0.0/16 -j ISTIO_REDIRECT",
    ]


def test_outbound_port_exclusions_cover_tcp_and_udp_before_passthrough() -> None:
    lines = v4(["-o", "15020,9999"])
    idx = lines.index("-A OUTPUT -j ISTIO_OUTPUT")
    assert lines[idx + 1:idx + 6] == [
        "-A ISTIO_OUTPUT -p tcp --dport 15020 -j RETURN",
        "-A ISTIO_OUTPUT -p udp --dport 15020 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 9999 -j RETURN",
        "-A ISTIO_OUTPUT -p udp --dport 9999 -j RETURN",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
    ]


def test_custom_loopback_cidr_replaces_127_0_0_1() -> None:
    lines = v4([], env={"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.0/8"})
    assert "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN" in lines
    assert "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.0/8 -p tcp ! --dport 15008 -m owner --uid-owner 1337 " \
           "-j ISTIO_IN_REDIRECT" in lines


def test_capture_all_dns_has_no_server_addresses_in_either_family() -> None:
    spec, _ = parse_istio_args(BASE + ["--redirect-dns", "--capture-all-dns"], env={}, enable_ipv6=True)
    plan = build_iptables(spec)
    for fam in (4, 6):
        text = render_family(plan, fam)
        assert "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053" in text
        assert "-A PREROUTING -j ISTIO_INBOUND" in text
        assert "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1" in text
    nft = render_nft(build_nft(spec))
    assert nft.count("counter jump istio-output-dns") == 2  # nat istio-output and raw output, once each


def test_tproxy_wildcard_with_excluded_ports_returns_in_mangle() -> None:
    lines = v4(["-m", "TPROXY", "-b", "*", "-d", "15090"])
    mangle = lines[:lines.index("COMMIT")]
    assert "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN" in mangle


def test_env_is_overridden_by_flag_and_alias_env_wins_over_primary() -> None:
    spec, _ = parse_istio_args(["-b", "80"], env={"ISTIO_INBOUND_PORTS": "90"})
    assert spec.inbound_ports == (80,)
    spec, _ = parse_istio_args([], env={"ISTIO_INBOUND_PORTS": "90"})
    assert spec.inbound_ports == (90,)
    spec, _ = parse_istio_args([], env={"DROP_INVALID": "false", "INVALID_DROP": "true"})
    assert spec.drop_invalid is True
    spec, _ = parse_istio_args([], env={"ENVOY_PORT": "1"})  # -p is bound without env in Istio
    assert spec.proxy_port == 15001


def test_nft_outbound_exclusion_and_owner_group_exclude_forms() -> None:
    spec, _ = parse_istio_args(BASE + ["-o", "15020"], env={"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"})
    nft = render_nft(build_nft(spec)).splitlines()
    assert "add rule inet istio-proxy-nat istio-output meta l4proto tcp tcp dport 15020 counter return" in nft
    assert "add rule inet istio-proxy-nat istio-output meta l4proto udp udp dport 15020 counter return" in nft
    assert "add rule inet istio-proxy-nat istio-output skgid 888 counter return" in nft
