"""meshnet.lite.jsonlite gives exactly what json gives, for valid and invalid documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.lite import jsonlite

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text())
documents = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids), st.dictionaries(st.text(), kids)),
                         max_leaves=20)


@settings(max_examples=400)
@given(documents)
def test_round_trip_identical_to_json(doc: object) -> None:
    text = json.dumps(doc)
    assert jsonlite.dumps(doc) == text
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.loads(text.encode()) == json.loads(text)


def _same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (json accepts the NaN literal; nan != nan)."""
    return type(a) is type(b) and json.dumps(a) == json.dumps(b)


@settings(max_examples=400)
@given(st.text(max_size=40))
def test_invalid_documents_raise_value_error_like_json(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            jsonlite.loads(text)
        return
    assert _same(jsonlite.loads(text), expected)


@pytest.mark.parametrize("text", ["NaN", "[NaN]", "Infinity", "-Infinity", '{"a": [NaN, -Infinity]}'])
def test_non_finite_literals_decode_like_json(text: str) -> None:
    # Found by hypothesis: the comparison itself must not rely on nan == nan.
    assert _same(jsonlite.loads(text), json.loads(text))
    assert not _same(jsonlite.loads("NaN"), 1.0)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_too_deep_nesting_is_a_value_error_not_a_recursion_error(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth, "[" * depth):
        with pytest.raises(ValueError, match="nested too deeply|Expecting"):
            jsonlite.loads(text)


def test_errors_are_json_decode_errors_under_isolated_mode() -> None:
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); import meshnet.lite.jsonlite as j\n"
            "for bad in ('{', '[1,]', '{} x', ''):\n"
            "    try: j.loads(bad)\n"
            "    except ValueError as e: print(type(e).__name__)\n")
    out = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["JSONDecodeError"] * 4, out.stderr


def test_unserialisable_values_use_default_or_raise() -> None:
    assert jsonlite.dumps({"x": {1, 2}}, default=sorted) == '{"x": [1, 2]}'
    with pytest.raises(TypeError):
        jsonlite.dumps({"x": object()})


def test_importing_it_does_not_import_json_or_re() -> None:
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {root!r}); import meshnet.lite.jsonlite as j; j.loads('{{\"a\": [1]}}');"
            " print('json' in sys.modules, 're' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf{}", "{}".encode("utf-16"), '{"a": 1}'.encode("utf-16-le"), b"\xff"])
def test_bytes_are_utf8_only_and_anything_else_is_a_value_error(data: bytes) -> None:
    # json sniffs BOMs and UTF-16/32; CNI documents are UTF-8 (Go's encoding/json rejects a BOM too).
    with pytest.raises(ValueError):
        jsonlite.loads(data)


def test_same_as_json_on_edge_values() -> None:
    for text in ('{"a": 1, "a": 2}', "1e400", "-0", '"\\ud800"', " \n[] \n", '"\\u00e9"'):
        assert _same(jsonlite.loads(text), json.loads(text)), text
    assert jsonlite.loads(bytearray(b"[1]")) == [1]
    doc = {"k": "\u00e9", "n": [1.5, None, True]}
    assert jsonlite.dumps(doc) == json.dumps(doc)


def test_unsupported_options_are_type_errors() -> None:
    with pytest.raises(TypeError):
        jsonlite.dumps({}, indent=2)  # type: ignore[call-arg]  # the point: refused at run time
    with pytest.raises(TypeError):
        jsonlite.loads("{}", object_hook=dict)  # type: ignore[call-arg]  # the point: refused at run time
