"""The traffic lab behind test_traffic_matrix.py: one pod with a fake sidecar, two peers, re-appliable rules.

Layout (a :class:`~topology.Topology` with an extra ``eth1`` link)::

    peer  (eth0 side)          pod                                    peer1 (eth1 side)
      "peer" server              "proxy"  uid 1337: tcp 15001 15006 15053, udp 15053 (IP_TRANSPARENT)
        tcp 8080 9090 7070 53     "app"    uid 1000: tcp 8080 15020             "peer1" server: tcp 8080
        udp 53                                                                   route VIRT_DST -> pod eth1

Every landing server answers with its ``name``, so an assertion says exactly where a connection
landed (proxy / app / peer / peer1) and, for the proxy, on which listener and with which original
destination. The lab is built once per backend; :meth:`Lab.apply` swaps rule sets in between cases
with the applier's own ``cleanup`` so each case starts from a clean namespace.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.topology import Topology

from meshnet.apply.netns import Netns
from meshnet.lite.spawn import Completed
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.resolvconf import read_nameservers
from meshnet.spec.spec import Spec

PROXY_UID = 1337
APP_UID = 1000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
DNS_PORT = 15053
APP_PORT = 8080
EXCLUDED_INBOUND_PORT = 15020  # in the injector's -d list
PEER_PORT = 8080
OTHER_PEER_PORT = 9090  # used for -o (exclude outbound port)
INCLUDED_PEER_PORT = 7070  # used for -q (include outbound port)
# A documentation address (TEST-NET-3) that only exists as a route in peer1: a VM behind a
# kube-virt interface sends traffic for "the outside world" through the pod.
VIRT_DST = "203.0.113.10"
VIRT_PORT = 80

# What the sidecar injector passes to istio-init (istio-reference.md section 1).
INJECTOR_FLAGS = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                  "-b", "*", "-d", "15090,15021,15020")  # fmt: skip

BACKENDS = ("iptables-legacy", "iptables-nft", "nftables", "iptc")


def istio_spec(*extra: str, dns_servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())) -> Spec:
    """The injector's flags plus ``extra`` (later flags win, as with pflag), IPv6 on."""
    spec, _ = parse_istio_args([*INJECTOR_FLAGS, *extra], env={}, enable_ipv6=True, dns_servers=dns_servers)
    return spec


def resolv_conf_servers(*nameservers: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Nameservers as istio-iptables reads them: through a real resolv.conf file."""
    with tempfile.TemporaryDirectory(prefix="mn-resolv-") as d:
        path = Path(d) / "resolv.conf"
        path.write_text("".join(f"nameserver {s}\n" for s in nameservers) + "options ndots:5\n")
        return read_nameservers(str(path))


@dataclass
class Lab:
    topo: Topology
    backend: str
    applied: Spec | None = field(default=None, init=False)

    # -- addresses
    @property
    def pod(self) -> Netns:
        return self.topo.pod

    @property
    def peer(self) -> Netns:
        return self.topo.peer

    @property
    def peer1(self) -> Netns:
        return self.topo.peer_of("eth1")

    def ip(self, who: str, family: int = 4) -> str:
        """Address of ``pod``/``peer`` (eth0 link) or ``pod1``/``peer1`` (eth1 link)."""
        link = self.topo.links["eth1" if who.endswith("1") else "eth0"]
        attr = f"{who.rstrip('1')}_ip{family}"
        value = getattr(link, attr)
        assert value, f"{who} has no IPv{family} address"
        return value

    # -- rules
    def apply(self, spec: Spec) -> None:
        """Make ``spec`` the only interception state in the pod (no-op if it already is)."""
        if spec == self.applied:
            return
        self.clear()
        from meshnet.apply.applier import apply_spec

        # Belt and braces: the applier must target the pod, never the test runner's namespace.
        assert not self.pod.is_current()
        result = apply_spec(self.pod, spec, backend=self.backend)
        assert result.backend == self.backend, result
        self.applied = spec

    def clear(self) -> None:
        from meshnet.apply.applier import cleanup

        assert not self.pod.is_current()
        cleanup(self.pod, backend="all")
        # Old NAT bindings would otherwise steer a reused 4-tuple (UDP DNS) the old way.
        self.pod.run(["conntrack", "-F"], check=False)
        self.applied = None

    def dump(self) -> str:
        """The pod's rules, for assertion messages: which rule set a failing case ran against."""
        out = []
        for argv in (["iptables-legacy-save"], ["ip6tables-legacy-save"], ["iptables-nft-save"],
                     ["ip6tables-nft-save"], ["nft", "list", "ruleset"]):  # fmt: skip
            if argv[0].endswith("legacy-save") and not self._has_legacy(argv[0]):
                continue  # reading would create legacy tables
            cp = self.pod.run(argv, check=False)
            if cp.stdout.strip():
                out.append(f"## {argv[0]}\n{cp.stdout}")
        return "\n".join(out)

    def _has_legacy(self, tool: str) -> bool:
        name = "ip6_tables_names" if tool.startswith("ip6") else "ip_tables_names"
        try:
            return bool(self.pod.read_proc_net(name).strip())
        except FileNotFoundError:
            return False


def expect(
    r: dict[str, Any],
    name: str,
    *,
    port: int | None = None,
    orig_dst: Sequence[Any] | None = None,
    lab: Lab | None = None,
) -> None:
    """Assert where a connection landed; on failure show the reply and the live rules."""
    where = f"landed: {r}" + (f"\nrules:\n{lab.dump()}" if lab is not None else "")
    assert r.get("name") == name, where
    if port is not None:
        assert r["listener_port"] == port, where
    if orig_dst is not None:
        assert r["orig_dst"] == list(orig_dst), where


@contextmanager
def traffic_lab(backend: str) -> Iterator[Lab]:
    """Build the lab (namespaces, servers, peer1's route), yield it, always tear it down."""
    with Topology(extra_pod_ifaces=["eth1"]) as topo:
        lab = Lab(topo, backend)
        pod, peer, peer1 = lab.pod, lab.peer, lab.peer1
        topo.start_server(pod, "proxy", tcp_ports=[OUTBOUND_PORT, INBOUND_PORT, DNS_PORT], udp_ports=[DNS_PORT],
                          uid=PROXY_UID, transparent=True)  # fmt: skip
        topo.start_server(pod, "app", tcp_ports=[APP_PORT, EXCLUDED_INBOUND_PORT], uid=APP_UID)
        topo.start_server(peer, "peer", tcp_ports=[PEER_PORT, OTHER_PEER_PORT, INCLUDED_PEER_PORT, 53],
                          udp_ports=[53])  # fmt: skip
        topo.start_server(peer1, "peer1", tcp_ports=[PEER_PORT])
        # Only a host route, never a default route: anything not redirected dies in the pod.
        _ip(peer1, "route", "add", f"{VIRT_DST}/32", "via", lab.ip("pod1"))
        try:
            yield lab
        finally:
            lab.clear()


def _ip(ns: Netns, *args: str) -> Completed:
    return ns.run(["ip", *args])
