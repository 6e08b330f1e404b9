"""Hypothesis strategies for valid interception specs."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from meshnet.spec.spec import Spec

ports = st.integers(min_value=1, max_value=65535)
port_lists = st.lists(ports, max_size=4).map(tuple)
ifaces = st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z").map(str)
owners = st.one_of(st.integers(min_value=0, max_value=70000).map(str), st.sampled_from(["root", "daemon"]))


@st.composite
def cidr4(draw: st.DrawFn) -> str:
    plen = draw(st.integers(min_value=8, max_value=32))
    addr = ipaddress.IPv4Address(draw(st.integers(min_value=0x0B000000, max_value=0xDF000000)))
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


@st.composite
def cidr6(draw: st.DrawFn) -> str:
    plen = draw(st.integers(min_value=16, max_value=128))
    addr = ipaddress.IPv6Address(draw(st.integers(min_value=0x20010DB8 << 96, max_value=(0x20010DB9 << 96) - 1)))
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False).with_prefixlen


cidrs = st.lists(st.one_of(cidr4(), cidr6()), max_size=3, unique=True).map(tuple)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    inbound_wild = draw(st.booleans())
    outbound_wild = draw(st.booleans())
    redirect_dns = draw(st.booleans())
    capture_all = draw(st.booleans())
    return Spec(
        proxy_port=draw(ports),
        inbound_capture_port=draw(ports),
        inbound_tunnel_port=draw(ports),
        proxy_uids=tuple(draw(st.lists(owners, min_size=1, max_size=2))),
        proxy_gids=tuple(draw(st.lists(owners, min_size=1, max_size=2))),
        mode=draw(st.sampled_from(["REDIRECT", "TPROXY"])),
        tproxy_mark=draw(st.integers(min_value=1, max_value=0xFFFF)),
        tproxy_route_table=draw(st.integers(min_value=1, max_value=250)),
        inbound_ports_wildcard=inbound_wild,
        inbound_ports=() if inbound_wild else draw(port_lists),
        inbound_exclude_ports=draw(port_lists),
        outbound_cidrs_wildcard=outbound_wild,
        outbound_include_cidrs=() if outbound_wild else draw(cidrs),
        outbound_exclude_cidrs=draw(cidrs),
        outbound_include_ports=draw(port_lists),
        outbound_exclude_ports=draw(port_lists),
        exclude_interfaces=tuple(draw(st.lists(ifaces, max_size=2, unique=True))),
        kube_virt_interfaces=tuple(draw(st.lists(ifaces, max_size=2, unique=True))),
        redirect_dns=redirect_dns,
        capture_all_dns=capture_all,
        dns_servers_v4=tuple(draw(st.lists(st.sampled_from(["10.96.0.10", "127.0.0.53", "8.8.8.8"]),
                                           max_size=2, unique=True))),
        dns_servers_v6=tuple(draw(st.lists(st.sampled_from(["fd00::10", "2001:db8::53"]), max_size=1))),
        drop_invalid=draw(st.booleans()),
        enable_ipv6=draw(st.booleans()),
        owner_groups_include=draw(st.one_of(st.none(), st.lists(owners, min_size=1, max_size=3).map(tuple))),
        owner_groups_exclude=tuple(draw(st.lists(owners, max_size=2))),
    )
