"""Turn any failure into one line on stderr and an exit code: never a traceback."""

from __future__ import annotations

import sys

from meshnet.errors import MeshnetError, one_line

TYPE_CHECKING = False  # keep `typing` off the istio-init start-up path
if TYPE_CHECKING:
    from collections.abc import Callable


# Diagnostic commands (status, diff, doctor, explain, conntrack) share one contract:
# 0 healthy / in sync, 1 findings / drift, 2 could not inspect or bad usage.
EXIT_OK, EXIT_FINDINGS, EXIT_CANNOT_INSPECT = 0, 1, 2


def fail(message: str, code: int = 1, prog: str = "meshnet") -> int:
    sys.stderr.write(f"{prog}: error: {one_line(message)}\n")
    return code


def guarded(fn: Callable[[], int], prog: str = "meshnet", error_code: int | None = None) -> int:
    """Run fn; every failure is one line. `error_code` (diagnostic commands: 2) replaces the
    error's own code, so "could not inspect" never reads as "found a problem" (1)."""
    try:
        return fn()
    except MeshnetError as exc:
        return fail(str(exc), exc.exit_code if error_code is None else error_code, prog)
    except KeyboardInterrupt:
        return fail("interrupted", 130, prog)
    except BrokenPipeError:
        return 0
    except RecursionError:  # a pathological input that slipped past validation: still one line
        return fail("internal error: RecursionError (input nested too deeply)", error_code or 1, prog)
    except Exception as exc:  # a bug: still one line, with the type to report it
        return fail(f"internal error: {type(exc).__name__}: {exc}", error_code or 1, prog)


def diagnostic(fn: Callable[[], int], prog: str) -> int:
    """guarded() for a diagnostic command: errors exit 2, not 1 (which means findings)."""
    return guarded(fn, prog, EXIT_CANNOT_INSPECT)
