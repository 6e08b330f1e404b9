"""Property tests over random valid specs, and fuzzed invalid input."""

from __future__ import annotations

import ipaddress
import re
import string

from harness.strategies import specs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.errors import MeshnetError, SpecError
from meshnet.plan.istio_builder import build_iptables
from meshnet.plan.model import BUILTIN_CHAINS, BUILTIN_TARGETS, EXTENSION_TARGETS
from meshnet.plan.nft_builder import build_nft
from meshnet.plan.render_nft import render_nft
from meshnet.plan.render_restore import render_family, render_transcript
from meshnet.spec.flags import parse_istio_args
from meshnet.spec.spec import Spec

ADDR_RE = re.compile(r"(?<![\w:.])(!\s)?-[sd] (\S+)")


def _addresses(text: str) -> list[str]:
    return [m.group(2) for m in ADDR_RE.finditer(text)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_rendering_never_raises_and_is_deterministic(spec: Spec) -> None:
    plan = build_iptables(spec)
    first = (render_transcript(plan), render_nft(build_nft(spec)))
    second = (render_transcript(build_iptables(spec)), render_nft(build_nft(spec)))
    assert first == second


@settings(max_examples=300, deadline=None)
@given(specs())
def test_families_never_mix_addresses(spec: Spec) -> None:
    plan = build_iptables(spec)
    for fam in plan.families():
        for addr in _addresses(render_family(plan, fam)):
            assert ipaddress.ip_interface(addr).version == fam, (fam, addr)
    if not spec.enable_ipv6:
        assert not plan.v6
        assert " ip6 " not in render_nft(build_nft(spec))


@settings(max_examples=300, deadline=None)
@given(specs())
def test_every_jump_target_is_declared(spec: Spec) -> None:
    plan = build_iptables(spec)
    for fam in plan.families():
        declared: dict[str, set[str]] = {}
        table = ""
        for line in render_family(plan, fam).splitlines():
            if line.startswith("* "):
                table = line[2:]
                declared[table] = set()
            elif line.startswith("-N "):
                declared[table].add(line[3:])
            elif line.startswith(("-A ", "-I ")):
                tokens = line.split()
                assert tokens[1] in declared[table] | BUILTIN_CHAINS
                target = tokens[tokens.index("-j") + 1]
                assert target in declared[table] | BUILTIN_TARGETS | EXTENSION_TARGETS, line
    nft = render_nft(build_nft(spec)).splitlines()
    chains = {(ln.split()[3], ln.split()[4]) for ln in nft if ln.startswith("add chain")}
    for line in nft:
        if " jump " in line:
            table = line.split()[3]
            assert (table, line.rsplit(" ", 1)[1]) in chains, line


# --- fuzzed invalid input: a SpecError (one clear line) or a valid value, never anything else ---

FIELD_FLAGS = ["-b", "-d", "-i", "-x", "-q", "-o", "-c", "-k", "-u", "-g", "-m", "-z", "-p", "-t", "-r"]
nasty = st.text(alphabet=string.printable + "\x00\u00e9\u2028", max_size=30)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(FIELD_FLAGS), nasty)
def test_fuzzed_flag_values_are_rejected_cleanly_or_render_safely(flag: str, value: str) -> None:
    try:
        spec, _ = parse_istio_args([flag, value], env={})
    except MeshnetError as exc:  # SpecError, or UsageError for values that look like options
        message = str(exc)
        assert "\n" not in message.replace("\\n", "")
        return
    # Accepted: nothing of the raw value may break out of its token in the rendered text.
    for text in (render_transcript(build_iptables(spec)), render_nft(build_nft(spec))):
        for line in text.splitlines():
            assert line.startswith(("iptables-save", "ip6tables-save", "* ", "-N ", "-A ", "-I ", "COMMIT",
                                    "add ", "flush ", "insert ")), line
            # Only these fixed constructs may carry quotes, braces or ';': a quoted interface name from
            # the validated alphabet, a base-chain declaration, a set of port numbers.
            bare = re.sub(r'"[A-Za-z0-9_.@:*+-]{1,16}"', "", line)
            bare = re.sub(r"\{ type \w+ hook \w+ priority -?\d+ ; \}", "", bare)
            bare = re.sub(r"\{ [0-9, ]+ \}", "", bare)
            assert not any(c in bare for c in ";#{}\"'`\\\x00"), line


@settings(max_examples=200, deadline=None)
@given(nasty)
def test_fuzzed_env_values_are_rejected_cleanly(value: str) -> None:
    for name in ("ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                 "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "ISTIO_INBOUND_PORTS", "REDIRECT_DNS"):
        try:
            parse_istio_args([], env={name: value})
        except SpecError:
            pass
