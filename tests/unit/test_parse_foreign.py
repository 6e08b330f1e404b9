"""The iptables-save parser never refuses a rule: unknown parts are kept verbatim (issue 10).

Unit level, over the foreign-rule corpus (`foreign_corpus.SAVED`, what iptables-save prints for the
extensions of iptables-extensions(8)); the kernel level is test_foreign_rules.py.
"""

from __future__ import annotations

import pytest
from harness.foreign_corpus import SAVED

from meshnet.diagnose.explain.iptables import explain_ruleset
from meshnet.diagnose.explain.packet import parse_packet
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.model import COMMENT, OPAQUE, IptablesPlan, Rule
from meshnet.spec.flags import parse_istio_args
from meshnet.state.compare import diff_rulesets
from meshnet.state.parse_save import parse_rule, parse_save, split_words

# Lines where a part meshnet models is printed in Istio's spelling (implicit `-m tcp`, hex marks).
NORMALISED = {
    "-A OUTPUT -m owner --socket-exists --uid-owner 0 -j ACCEPT":
        "-A OUTPUT -m owner --socket-exists -m owner --uid-owner 0 -j ACCEPT",
    '-A INPUT -p tcp -m tcp --dport 80 -m comment --comment "web" -j ACCEPT':
        '-A INPUT -p tcp --dport 80 -m comment --comment "web" -j ACCEPT',
    '-A OUTPUT -p tcp -m mark --mark 0x1 -m string --string "-m x" --algo bm -j RETURN':
        '-A OUTPUT -p tcp -m mark --mark 1 -m string --string "-m x" --algo bm -j RETURN',
}


def parse_line(line: str, table: str = "filter") -> Rule:
    return parse_rule(table, split_words(line)[1:], line)


@pytest.mark.parametrize("line", SAVED)
def test_every_saved_line_parses_and_prints_back(line: str) -> None:
    rule = parse_line(line)
    assert str(rule) == NORMALISED.get(line, line)
    # Printing and parsing again is the identity (what diff compares).
    assert parse_line(str(rule)).key() == rule.key()
    # Every opaque part is a verbatim slice of what the kernel printed.
    for part in rule.opaque_parts:
        assert part.split(" ", 1)[-1] in line


def test_tcp_flags_all_none_is_one_opaque_part() -> None:
    rule = parse_line("-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE -j DROP")
    assert [(m.kind, m.value) for m in rule.matches] == [
        ("proto", "tcp"), (OPAQUE, "-m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE")]
    assert rule.target.name == "DROP"


def test_quoting_is_kept_byte_for_byte() -> None:
    line = "-A INPUT -m comment --comment \"a \\\"quoted\\\" it\\'s comment\" -j LOG --log-prefix \"x \\\"y\\\" \""
    rule = parse_line(line)
    assert rule.matches[0].kind == COMMENT and rule.target.name == "LOG"
    assert str(rule) == line
    assert rule.target.opaque == '--log-prefix "x \\"y\\" "'


def test_text_arguments_that_look_like_options() -> None:
    # xtables prints `-x` unquoted (only letters, digits, '-' and '_'): it is the comment, not an option.
    rule = parse_line("-A INPUT -m comment --comment -j -j ACCEPT")
    assert rule.target.name == "ACCEPT" and rule.matches[0].value == "-m comment --comment -j"


def test_known_modules_with_unknown_options_are_opaque_whole() -> None:
    rule = parse_line("-A OUTPUT -m owner --gid-owner 0 --suppl-groups -j ACCEPT")
    assert [m.kind for m in rule.matches] == [OPAQUE]
    rule = parse_line("-A INPUT -m conntrack --ctstate NEW --ctdir ORIGINAL -j ACCEPT")
    assert [m.kind for m in rule.matches] == [OPAQUE]


def test_target_options_not_modelled_are_opaque_and_modelled_ones_normalised() -> None:
    assert parse_line("-A P -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff").target.args == \
        ("--save-mark",)
    masked = parse_line("-A P -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff").target
    assert masked.args == ("--save-mark", "--nfmask", "0xff", "--ctmask", "0xff") and not masked.opaque
    assert parse_line("-A P -j CT --notrack").target.args == ("--notrack",)
    quoted = parse_line('-A P -j NFLOG --nflog-prefix "a b" --nflog-group 3').target
    assert quoted.args == () and quoted.opaque == '--nflog-prefix "a b" --nflog-group 3'
    assert parse_line("-A P -j MARK --set-xmark 0x539/0xffffffff").target.args == ("--set-mark", "1337")


def test_goto_is_not_a_jump() -> None:
    rule = parse_line("-A PREROUTING -s 192.0.2.0/24 -g MN_FOREIGN")
    assert rule.target.goto and rule.target.is_jump_to_chain
    assert str(rule) == "-A PREROUTING -s 192.0.2.0/24 -g MN_FOREIGN"


def test_garbage_never_raises() -> None:
    for line in ("-A INPUT foo bar", "-A INPUT -p", "-A INPUT ! ! -p tcp", "-A INPUT -m", "-A INPUT -j",
                 "-A INPUT -x 1 -j DROP", "-A INPUT '", '-A INPUT "\\', "-A INPUT -p tcp --dport"):
        rule = parse_line(line)
        assert rule.chain == "INPUT"


def test_incompatible_table_is_unreadable() -> None:
    rs = parse_save("# Table `nat' is incompatible, use 'nft' tool.\n", 4)
    assert rs.unreadable == {"nat"}


# ----------------------------------------------------------------- the issue's reproduction, offline
def _issue_state() -> tuple[IptablesPlan, str]:
    spec, _ = parse_istio_args(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                                "-b", "*", "-d", "15090,15021,15020"], {})
    plan = build_iptables(spec)
    from meshnet.plan.render_restore import render_family

    text = render_family(plan, 4).replace(
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN")
    assert "tcp-flags" in text
    return plan, text


def test_issue_tcp_flags_in_istio_inbound_explain_uncertain_and_diff_one_extra() -> None:
    plan, text = _issue_state()
    live = parse_save(text, 4)
    ex = explain_ruleset(live, parse_packet("tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0"), "iptables-nft")
    assert ex.verdict is not None and ex.verdict.kind == "uncertain", ex.lines()
    assert "tcp-flags" in ex.verdict.text
    diff = diff_rulesets(plan.ruleset(4), live)
    assert [e.kind for e in diff.entries] == ["extra"], diff.lines()
    assert "--tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE" in diff.lines()[0]


def test_known_part_that_does_not_match_decides_before_an_opaque_one() -> None:
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n"
            "-A PREROUTING -s 192.0.2.0/24 -m string --string \"x y\" --algo bm -j RETURN\n"
            "-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
            "-A ISTIO_IN_REDIRECT -j LOG --log-prefix \"never \"\nCOMMIT\n")
    ex = explain_ruleset(parse_save(text, 4), parse_packet("tcp 10.1.1.1:5000 -> 10.0.0.5:8080 in iface=eth0"), "x")
    assert ex.verdict is not None and ex.verdict.kind == "redirect" and ex.verdict.port == 15006
    hit = parse_packet("tcp 192.0.2.7:5000 -> 10.0.0.5:8080 in iface=eth0")
    ex = explain_ruleset(parse_save(text, 4), hit, "x")
    assert ex.verdict is not None and ex.verdict.kind == "uncertain"


def test_path_neutral_targets_do_not_stop_the_walk_but_unknown_ones_do() -> None:
    base = ("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT {rule}\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n")
    pkt = parse_packet("tcp 10.0.0.5:1 -> 10.0.0.9:80 out uid=1")
    for rule, kind in (("-j LOG --log-prefix \"a b \"", "redirect"), ("-j NFLOG --nflog-group 3", "redirect"),
                       ("-j DNAT --to-destination 10.1.1.1:80", "uncertain"),
                       ("-j MARK --set-xmark 0x1/0xff", "redirect"),
                       ("-j CONNMARK --set-xmark 0x1/0x1", "uncertain"), ("-j CT --notrack", "uncertain"),
                       ("-j REDIRECT --to-ports 9 --random", "redirect"), ("-j NOPE", "uncertain"),
                       ("-g NOWHERE", "uncertain")):
        ex = explain_ruleset(parse_save(base.format(rule=rule), 4), pkt, "x")
        assert ex.verdict is not None and ex.verdict.kind == kind, (rule, ex.lines())


def test_incompatible_table_makes_explain_uncertain() -> None:
    rs = parse_save("# Table `nat' is incompatible, use 'nft' tool.\n", 4)
    ex = explain_ruleset(rs, parse_packet("tcp 10.0.0.5:1 -> 10.0.0.9:80 out uid=1"), "iptables-nft")
    assert ex.verdict is not None and ex.verdict.kind == "uncertain"
