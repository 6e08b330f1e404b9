"""Turn any failure into one line on stderr and an exit code: never a traceback."""

from __future__ import annotations

import sys

from meshnet.errors import MeshnetError

TYPE_CHECKING = False  # keep `typing` off the istio-init start-up path
if TYPE_CHECKING:
    from collections.abc import Callable


def fail(message: str, code: int = 1, prog: str = "meshnet") -> int:
    sys.stderr.write(f"{prog}: error: {message}\n")
    return code


def guarded(fn: Callable[[], int], prog: str = "meshnet") -> int:
    try:
        return fn()
    except MeshnetError as exc:
        return fail(str(exc), exc.exit_code, prog)
    except KeyboardInterrupt:
        return fail("interrupted", 130, prog)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, with the type to report it
        return fail(f"internal error: {type(exc).__name__}: {exc}", 1, prog)
