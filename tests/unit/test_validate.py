"""The regex-free validators accept exactly what the documented patterns accept."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.spec.values import _has_forbidden, is_interface_name, is_owner

IFACE = re.compile(r"[A-Za-z0-9_.@:-]{1,15}\+?")
OWNER = re.compile(r"(?:[0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31})")
FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f\"'`;#{}$\\]")
text = st.text(alphabet=st.sampled_from(list("aZ09_.@:-+ \t;\\$\"'`#{}\x00\x7f\u00e9\u2028\u00a0")), max_size=20)


@settings(max_examples=3000)
@given(text)
def test_same_language_as_the_patterns(s: str) -> None:
    assert is_interface_name(s) == (bool(IFACE.fullmatch(s)) and s not in (".", ".."))
    assert is_owner(s) == bool(OWNER.fullmatch(s))
    assert _has_forbidden(s) == bool(FORBIDDEN.search(s))
