"""The match kinds' table (meshnet.plan.match_kinds): every entry is complete and consistent.

For each kind a builder emits: its restore tokens parse back (through the parser that reads the
table's iptables-save spelling) to the same Match, negated or not; explain evaluates it or says it
cannot (Uncertain), never with a KeyError or a wrong type.
"""

from __future__ import annotations

import ipaddress

import pytest

from meshnet.diagnose.explain.packet import Packet
from meshnet.diagnose.explain.values import Uncertain
from meshnet.plan.match_kinds import COMMENT, KINDS, MATCH_KINDS, OPAQUE, kind_of
from meshnet.plan.model import Match
from meshnet.state.parse_save import parse_rule, split_words

# One value per kind, in Istio's spelling (what a builder writes).
SAMPLES = {
    "proto": "tcp", "src": "10.0.0.0/8", "dst": "127.0.0.1/32", "in": "eth0", "out": "lo", "dport": "15008",
    "sport": "41000", "dports": "80,15008", "uid": "1337", "gid": "1337", "ctstate": "NEW,ESTABLISHED",
    "mark": "1337/0xfff", "connmark": "1337", "module": "tcp", "socket_exists": "", "set": "istio-probes-v4 dst",
}
NEGATABLE = set(MATCH_KINDS) - {"module"}
PACKET = Packet("tcp", ipaddress.ip_address("10.0.0.5"), 41000, ipaddress.ip_address("127.0.0.1"), 15008, "out",
                uid=1337, gid=1337, oif="lo", mark=1337, ctmark=1337)


def test_every_kind_has_a_sample_and_an_entry() -> None:
    assert set(SAMPLES) == set(MATCH_KINDS)
    assert set(KINDS) == {*MATCH_KINDS, OPAQUE, COMMENT}
    with pytest.raises(ValueError, match="unknown match kind"):
        kind_of("nope")


@pytest.mark.parametrize(("kind", "negated"), [(k, False) for k in sorted(MATCH_KINDS)]
                         + [(k, True) for k in sorted(NEGATABLE)])  # a bare `-m tcp` is never negated
def test_restore_tokens_parse_back_to_the_same_match(kind: str, negated: bool) -> None:
    match = Match(kind, SAMPLES[kind], negated)
    line = f"-A OUTPUT {match} -j RETURN"
    rule = parse_rule("nat", split_words(line)[1:], line)
    assert rule.matches == (match,), line
    assert str(rule) == line


@pytest.mark.parametrize("kind", sorted(MATCH_KINDS))
def test_explain_evaluates_or_says_uncertain(kind: str) -> None:
    entry = KINDS[kind]
    try:
        plain = entry.matches(SAMPLES[kind], False, PACKET, "OUTPUT")
    except Uncertain:
        return  # explain says so in its verdict (socket_exists, set)
    assert plain is True, f"{kind} {SAMPLES[kind]} should hold for {PACKET.describe()}"
    if kind in NEGATABLE:
        assert entry.matches(SAMPLES[kind], True, PACKET, "OUTPUT") is False


def test_owner_never_matches_an_arriving_packet() -> None:
    # No local socket on PREROUTING: neither `--uid-owner 1337` nor `! --uid-owner 1337` holds.
    assert not KINDS["uid"].matches("1337", False, PACKET, "PREROUTING")
    assert not KINDS["uid"].matches("1337", True, PACKET, "PREROUTING")


def test_canonical_is_what_the_kernel_prints() -> None:
    assert Match("dst", "127.0.0.1").canonical() == Match("dst", "127.0.0.1/32")
    assert Match("src", "10.1.2.3/8", True).canonical() == Match("src", "10.0.0.0/8", True)
    assert Match("mark", "0x539/0xFFF").canonical() == Match("mark", "1337/0xfff")
    assert Match("gid", "root").canonical() == Match("gid", "0")
    assert Match("uid", "no-such-user-here").canonical() == Match("uid", "no-such-user-here")
    opaque = Match(OPAQUE, '-m string --string "a b"')
    assert opaque.canonical() is opaque and opaque.tokens() == ['-m string --string "a b"']
