"""One exception type per layer. Entry points turn them into one line and an exit code."""

from __future__ import annotations


class MeshnetError(Exception):
    """Base class: the message is a complete sentence a user can act on."""

    exit_code = 1


class SpecError(MeshnetError):
    """Invalid interception input (flag, env, YAML, annotation). Names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {value!r}: {reason}")


class UsageError(MeshnetError):
    """Bad command line usage (unknown flag, missing argument)."""

    exit_code = 2


class ApplyError(MeshnetError):
    """The kernel refused a change, or the namespace could not be programmed."""


class ValidationFailed(MeshnetError):
    """istio-validation: traffic was not redirected in time (Istio's exit status 126)."""

    exit_code = 126


class CapabilityError(MeshnetError):
    """The process lacks a Linux capability the operation needs; the message names it (meshnet.caps).

    Exit 2 ("could not inspect" for the diagnostics); istio-iptables turns it into its usual 1."""

    exit_code = 2
