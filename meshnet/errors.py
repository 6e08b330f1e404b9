"""One exception type per layer. Entry points turn them into one line and an exit code."""

from __future__ import annotations

QUOTE_LIMIT = 80  # characters of a user value an error message repeats
LINE_LIMIT = 1000  # a whole error line: kernel stderr and paths fit, a 100 KB value does not


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr() of a value for an error message, cut to `limit` characters (a 100 KB annotation
    must not be echoed whole into a terminal, a CNI error object or a log)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str | bytes | list | tuple | dict) else "value"
    return f"{text[:limit]}... ({size})"


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """A message as one bounded line: newlines become '; ', the rest is cut."""
    text = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit] + "... (cut)"


class MeshnetError(Exception):
    """Base class: the message is a complete sentence a user can act on."""

    exit_code = 1


class SpecError(MeshnetError):
    """Invalid interception input (flag, env, YAML, annotation). Names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {quote(value)}: {reason}")


class UsageError(MeshnetError):
    """Bad command line usage (unknown flag, missing argument)."""

    exit_code = 2


class ApplyError(MeshnetError):
    """The kernel refused a change, or the namespace could not be programmed."""


class ValidationFailed(MeshnetError):
    """istio-validation: traffic was not redirected in time (Istio's exit status 126)."""

    exit_code = 126


class CapabilityError(MeshnetError):
    """The process lacks a Linux capability the operation needs; the message names it (meshnet.apply.caps).

    Exit 2 ("could not inspect" for the diagnostics); istio-iptables turns it into its usual 1."""

    exit_code = 2
