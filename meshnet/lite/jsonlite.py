"""JSON on the C accelerator alone, for the per-pod CNI path.

`import json` costs ~8 ms (json.decoder pulls in `re` and `enum`), half of the CNI plugin's own
start-up under `python3 -IS`. The C scanner and encoder in `_json` do all the work `json` would
do for the plain documents CNI exchanges; this module wires them up without the Python layers.
Errors surface as ValueError (a malformed document raises json.decoder.JSONDecodeError, which is
one: only that error path imports `json`).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WHITESPACE = " \t\n\r"


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # duck-typed context, as json's


def loads(text: str | bytes | bytearray) -> Any:
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = _scan(text, start)
    except ValueError:
        raise
    except RecursionError:  # nesting deeper than the interpreter's stack: a bad document, not a bug
        raise ValueError("JSON document nested too deeply") from None
    except Exception:  # StopIteration, or the scanner failing to build its error (seen under -I -S)
        return _slow_loads(text)  # the error path: json itself words the JSONDecodeError
    if text[end:].strip(_WHITESPACE):
        return _slow_loads(text)
    return obj


def _slow_loads(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON document nested too deeply") from None


def _no_default(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Compact-ish `json.dumps(obj)` output (', ' and ': ' separators, ASCII), no indent."""
    encoder = _json.make_encoder({}, default or _no_default, _json.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, True)
    return "".join(encoder(obj, 0))
