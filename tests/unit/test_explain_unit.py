"""explain's evaluator on rule sets built in memory: the three-valued logic and the verdict names."""

from __future__ import annotations

from meshnet.diagnose.explain.iptables import explain_ruleset
from meshnet.diagnose.explain.packet import owner_defaults, parse_packet
from meshnet.diagnose.explain.result import Explanation
from meshnet.lite.records import replace
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.model import Family, Match, Op, Rule, RuleSet, Target
from meshnet.spec.flags import parse_istio_args
from meshnet.state.parse_save import parse_save


def ruleset(*flags: str, family: Family = 4) -> RuleSet:
    spec, _ = parse_istio_args(["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-i", "*", "-b", "*",
                                *flags], env={}, enable_ipv6=True)
    return build_iptables(spec).ruleset(family)


def explain(rs: RuleSet, text: str, oif: str | None = "eth0") -> Explanation:
    packet, _ = owner_defaults(parse_packet(text))
    if packet.direction == "out" and packet.oif is None:
        packet = replace(packet, oif=oif)
    return explain_ruleset(rs, packet, "test")


def test_packet_syntax() -> None:
    p = parse_packet("udp [fd00::2]:40000 -> [fd00::1]:53 out uid=1337 mark=0x539 ctmark=1337 state=established")
    assert (p.family, p.proto, p.dport, p.uid, p.mark, p.ctmark, p.state) == (6, "udp", 53, 1337, 1337, 1337,
                                                                                "ESTABLISHED")
    assert parse_packet("tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0").iif == "eth0"


def test_outbound_and_inbound_verdicts() -> None:
    rs = ruleset()
    out = explain(rs, "tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000")
    assert out.verdict and (out.verdict.kind, out.verdict.port, out.verdict.capture) == ("redirect", 15001, "outbound")
    assert "ISTIO_REDIRECT rule 1" in out.paths[-1]
    inb = explain(rs, "tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0")
    assert inb.verdict and (inb.verdict.port, inb.verdict.capture) == (15006, "inbound")
    tunnel = explain(rs, "tcp 10.1.1.1:5000 -> 10.0.0.5:15008 in iface=eth0")
    assert tunnel.verdict and tunnel.verdict.kind == "pass"


def test_excluded_cidr_negation_and_ports() -> None:
    rs = ruleset("-x", "10.96.0.0/12", "-o", "3306")
    kinds = [(v.kind if (v := explain(rs, text).verdict) else None) for text in (
        "tcp 10.0.0.5:1 -> 10.96.0.10:80 out uid=1000", "tcp 10.0.0.5:1 -> 10.200.0.1:3306 out uid=1000",
        "tcp 10.0.0.5:1 -> 10.200.0.1:3307 out uid=1000")]
    assert kinds == ["pass", "pass", "redirect"]


def test_nat_only_sees_new_connections() -> None:
    ex = explain(ruleset(), "tcp 10.0.0.5:41000 -> 10.96.0.10:80 out uid=1000 state=ESTABLISHED")
    assert ex.verdict and ex.verdict.kind == "pass"
    assert any("NEW" in n for n in ex.notes)


def test_unknown_owner_is_uncertain_not_guessed() -> None:
    ex = explain(ruleset(), "tcp 10.0.0.5:41000 -> 10.96.0.10:80 out")
    assert ex.verdict and ex.verdict.kind == "uncertain"


def test_unsupported_match_is_uncertain() -> None:
    text = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n" \
           "-A ISTIO_OUTPUT -m statistic --mode random --probability 0.5 -j RETURN\n" \
           "-A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"
    ex = explain(parse_save(text, 4), "tcp 10.0.0.5:1 -> 10.0.0.9:80 out uid=1")
    assert ex.verdict and ex.verdict.kind == "uncertain" and "statistic" in ex.verdict.text


def test_tproxy_and_marks() -> None:
    rs = ruleset("-m", "TPROXY")
    inb = explain(rs, "tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0")
    assert inb.verdict and inb.verdict.kind == "tproxy" and inb.verdict.port == 15006
    # An established inbound connection is diverted by its mark, not re-TPROXYed.
    est = explain(rs, "tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0 state=ESTABLISHED")
    assert est.verdict and est.verdict.kind == "pass"
    assert any("ISTIO_DIVERT" in p for p in est.paths)


def test_drop_target() -> None:
    rs = RuleSet.from_ops(4, [Op(Rule("mangle", "PREROUTING", (Match("ctstate", "INVALID"),), Target("DROP")))])
    ex = explain(rs, "tcp 1.1.1.1:1 -> 2.2.2.2:2 in iface=eth0 state=INVALID")
    assert ex.verdict and ex.verdict.kind == "drop"
