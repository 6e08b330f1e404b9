"""`meshnet doctor` without a spec: the intent is read from the live rules' structure and canonical
probe packets are walked through explain. Each root cause is built on purpose in its own `mn-`
namespace (one iptables / nft command on a healthy pod) and must give exactly its finding."""

from __future__ import annotations

import pytest
from harness.topology import Topology
from harness.traffic_helpers import istio_spec, resolv_conf_servers

from meshnet.apply.applier import apply_spec
from meshnet.apply.netns import Netns
from meshnet.diagnose.checks.capture_probes import pod_addresses, probes
from meshnet.diagnose.checks.intent import infer, nft_rules, xt_rules
from meshnet.diagnose.doctor import diagnose
from meshnet.spec.spec import Spec
from meshnet.state.live import read_live

pytestmark = [pytest.mark.netns]
PROXY_TCP = [15001, 15006, 15053]




def proxy(t: Topology, uid: int = 1337, gid: int | None = None, udp: bool = True) -> None:
    t.start_server(t.pod, "proxy", tcp_ports=PROXY_TCP, udp_ports=[15053] if udp else [], uid=uid, gid=gid)


def build(t: Topology, spec: Spec, backend: str = "iptables-nft", *, uid: int = 1337) -> None:
    apply_spec(t.pod, spec, backend=backend)
    proxy(t, uid=uid)


def findings(t: Topology, host: Netns) -> dict[str, list[str]]:
    report = diagnose(t.pod, None, host)
    return {f.kind: [*f.evidence, f"fix: {f.fix}"] for f in report.problems}


def both(t: Topology, *argv: str, v6: bool = True) -> None:
    t.pod.run(["iptables-nft", *argv])
    if v6:
        t.pod.run(["ip6tables-nft", *argv])


# ----------------------------------------------------------------- the intent
def test_intent_of_a_healthy_pod_on_each_backend(topo: Topology) -> None:
    spec = istio_spec("--redirect-dns", "-o", "9999", "-x", "10.200.0.0/16",
                      dns_servers=resolv_conf_servers(topo.peer_ip4))
    for backend in ("iptables-nft", "nftables"):
        apply_spec(topo.pod, spec, backend=backend)
        live = read_live(topo.pod)
        rules = nft_rules(live) if backend == "nftables" else xt_rules(live, backend, 4)
        it = infer(rules, backend)
        assert (it.mode, it.outbound_port, it.inbound_port) == ("REDIRECT", 15001, 15006), it.lines()
        assert it.proxy_uids == {1337} and it.proxy_gids == {1337}
        assert {15008, 15020, 15021, 15090} <= it.inbound_excluded and it.inbound_included is None
        assert 9999 in it.outbound_excluded_ports and "10.200.0.0/16" in it.outbound_excluded_cidrs
        assert it.dns_capture and any(topo.peer_ip4 in s for s in it.dns_servers)
        names = [p.name for p in probes(it, 4, pod_addresses(topo.pod)[4])]
        assert names[:3] == ["outbound from an app uid", "outbound from the proxy (uid 1337)",
                             "inbound to app port 8080"]
        assert "DNS over UDP from an app uid" in names and "inbound to bypassed port 15021" in names
        topo.pod.run(["nft", "flush", "ruleset"])  # the next backend starts from nothing


# ----------------------------------------------------------------- one root cause each
def test_deleted_outbound_catch_all_with_listening_sidecar(topo: Topology, quiet_host: Netns) -> None:
    """The issue's measured case: doctor said 'healthy: no findings'."""
    build(topo, istio_spec())
    assert findings(topo, quiet_host) == {}
    topo.pod.run(["iptables-nft", "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"])
    got = findings(topo, quiet_host)
    assert set(got) == {"outbound-not-captured"}, got
    text = "\n".join(got["outbound-not-captured"])
    assert "verdict: not intercepted: leaves via eth0" in text and "ISTIO_OUTPUT" in text
    assert "catch-all ISTIO_OUTPUT -> ISTIO_REDIRECT rule is gone" in text
    assert "iptables -t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT" in text


def test_output_jump_gone(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec())
    topo.pod.run(["iptables-nft", "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])
    got = findings(topo, quiet_host)
    assert set(got) == {"outbound-not-captured"}, got
    text = "\n".join(got["outbound-not-captured"])
    assert "nat OUTPUT no longer jumps to ISTIO_OUTPUT" in text
    assert "structural hole: iptables-nft v4: -t nat ISTIO_OUTPUT" in text  # the hole is evidence here


def test_foreign_accept_ahead_in_nat_output(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec())
    topo.pod.run(["iptables-nft", "-t", "nat", "-I", "OUTPUT", "1", "-j", "ACCEPT"])
    got = findings(topo, quiet_host)
    assert set(got) == {"outbound-not-captured"}, got
    assert any("-A OUTPUT -j ACCEPT" in line and "delete it" in line for line in got["outbound-not-captured"])


def test_prerouting_jump_gone(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec())
    both(topo, "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    got = findings(topo, quiet_host)
    assert set(got) == {"inbound-not-captured"}, got
    text = "\n".join(got["inbound-not-captured"])
    assert "probe iptables-nft v4: inbound to app port 8080" in text
    assert "probe iptables-nft v6: inbound to app port 8080" in text  # the pod has IPv6: probed too
    assert "nat PREROUTING no longer jumps to ISTIO_INBOUND" in text


def test_tproxy_prerouting_jump_gone(topo: Topology, quiet_host: Netns) -> None:
    apply_spec(topo.pod, istio_spec("-m", "TPROXY"), backend="iptables-nft")
    topo.start_server(topo.pod, "proxy", tcp_ports=PROXY_TCP, udp_ports=[15053], uid=1337, transparent=True)
    assert findings(topo, quiet_host) == {}
    both(topo, "-t", "mangle", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    got = findings(topo, quiet_host)
    assert set(got) == {"inbound-not-captured"}, got
    assert any("mangle PREROUTING no longer jumps to ISTIO_INBOUND" in line for line in got["inbound-not-captured"])


def test_health_port_captured(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec())
    topo.pod.run(["iptables-nft", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15021", "-j",
                  "RETURN"])
    got = findings(topo, quiet_host)
    assert set(got) == {"bypass-captured"}, got
    text = "\n".join(got["bypass-captured"])
    assert "inbound to bypassed port 15021" in text and "--dport 15021 -j RETURN" in text


def test_nft_outbound_redirect_flushed(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec(), "nftables")
    topo.pod.run(["nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-redirect"])
    got = findings(topo, quiet_host)
    assert set(got) == {"outbound-not-captured"}, got
    assert any("istio-redirect has no REDIRECT rule" in line for line in got["outbound-not-captured"])


def test_nft_prerouting_jump_gone(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec(), "nftables")
    topo.pod.run(["nft", "flush", "chain", "inet", "istio-proxy-nat", "prerouting"])
    got = findings(topo, quiet_host)
    assert set(got) == {"inbound-not-captured"}, got
    assert any("nft add rule inet istio-proxy-nat prerouting meta l4proto tcp jump istio-inbound" in line
               for line in got["inbound-not-captured"])


def test_proxy_runs_as_a_random_uid(topo: Topology, quiet_host: Netns) -> None:
    """OpenShift: the rules exclude 1337, the sidecar got uid 1000680000 from the namespace's range."""
    build(topo, istio_spec(), uid=1000680000)
    got = findings(topo, quiet_host)
    assert set(got) == {"proxy-uid-not-excluded"}, got
    text = "\n".join(got["proxy-uid-not-excluded"])
    assert "listened on by uid 1000680000 gid 1000680000" in text
    assert "REDIRECT to :15001" in text and "istio-iptables -u 1000680000 -g 1000680000" in text


def test_proxy_uid_returns_deleted(topo: Topology, quiet_host: Netns) -> None:
    build(topo, istio_spec())
    for owner in ("--uid-owner", "--gid-owner"):
        topo.pod.run(["iptables-nft", "-t", "nat", "-D", "ISTIO_OUTPUT", "-m", "owner", owner, "1337", "-j",
                      "RETURN"])
    got = findings(topo, quiet_host)
    assert set(got) == {"proxy-uid-not-excluded"}, got


def test_dns_capture_without_dns_proxy(topo: Topology, quiet_host: Netns) -> None:
    servers = resolv_conf_servers(topo.peer_ip4, topo.peer_ip6 or "")
    apply_spec(topo.pod, istio_spec("--redirect-dns", dns_servers=servers), backend="iptables-nft")
    topo.start_server(topo.pod, "proxy", tcp_ports=[15001, 15006], uid=1337)
    got = findings(topo, quiet_host)
    assert set(got) == {"dns-proxy-not-listening"}, got


def test_dns_redirects_deleted(topo: Topology, quiet_host: Netns) -> None:
    servers = resolv_conf_servers(topo.peer_ip4, topo.peer_ip6 or "")
    build(topo, istio_spec("--redirect-dns", dns_servers=servers))
    assert findings(topo, quiet_host) == {}
    both(topo, "-t", "nat", "-F", "ISTIO_OUTPUT_DNS")
    got = findings(topo, quiet_host)
    assert set(got) == {"dns-not-captured"}, got
    text = "\n".join(got["dns-not-captured"])
    assert "DNS over UDP" in text and "DNS over TCP" in text and f"-> {topo.peer_ip4}:53" in text


# ----------------------------------------------------------------- healthy pods give nothing
@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", "nftables", "iptc"])
@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_healthy_pods_on_every_backend(topo: Topology, quiet_host: Netns, backend: str, mode: str) -> None:
    servers = resolv_conf_servers(topo.peer_ip4, topo.peer_ip6 or "")
    apply_spec(topo.pod, istio_spec("-m", mode, "--redirect-dns", dns_servers=servers), backend=backend)
    topo.start_server(topo.pod, "proxy", tcp_ports=PROXY_TCP, udp_ports=[15053], uid=1337,
                      transparent=mode == "TPROXY")
    report = diagnose(topo.pod, None, quiet_host)
    assert report.problems == [], "\n".join(report.lines())
    # and no probe was left undecided (an uncertain verdict would hide a broken capture)
    assert not [n for n in report.notes if "uncertain" in n], report.notes


@pytest.mark.parametrize("flags", [("-i", "", "-q", "7070"), ("-i", "10.0.0.0/8"), ("-b", "8080,9090"),
                                   ("-x", "10.96.0.0/12"), ("-o", "80,443"), ("-d", "15090,15021,15020,7777"),
                                   ("--redirect-dns",)], ids=lambda f: " ".join(f))
def test_healthy_variants_give_nothing(topo: Topology, quiet_host: Netns, flags: tuple[str, ...]) -> None:
    """The intent follows the flags' shapes: included/excluded ports and CIDRs, DNS to an IPv4-only
    nameserver on a dual-stack pod (nothing to capture on IPv6)."""
    servers = resolv_conf_servers(topo.peer_ip4)
    build(topo, istio_spec(*flags, dns_servers=servers))
    report = diagnose(topo.pod, None, quiet_host)
    assert report.problems == [], "\n".join(report.lines())


def test_outbound_capture_off_looks_like_a_deleted_catch_all(topo: Topology, quiet_host: Netns) -> None:
    """`-i ''` renders exactly the rules the deleted catch-all leaves: the finding says so, and with
    the pod's spec doctor checks against that instead."""
    build(topo, istio_spec("-i", ""))
    got = findings(topo, quiet_host)
    assert set(got) == {"outbound-not-captured"}
    assert any("includeOutboundIPRanges" in line for line in got["outbound-not-captured"])
    assert diagnose(topo.pod, istio_spec("-i", ""), quiet_host).problems == []


def test_a_rule_explain_cannot_evaluate_is_a_note_not_a_finding(topo: Topology, quiet_host: Netns) -> None:
    """A foreign rule ahead with a match explain does not model: the probe is uncertain, and doctor says
    so in a note instead of guessing a finding either way."""
    build(topo, istio_spec())
    topo.pod.run(["iptables-nft", "-t", "nat", "-I", "OUTPUT", "1", "-m", "statistic", "--mode", "random",
                  "--probability", "0.5", "-j", "ACCEPT"])
    report = diagnose(topo.pod, None, quiet_host)
    assert report.problems == [], "\n".join(report.lines())
    assert any("outbound from an app uid" in n and "uncertain" in n for n in report.notes), report.notes
