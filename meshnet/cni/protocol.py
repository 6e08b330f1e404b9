"""The CNI wire protocol: versions, the environment, error objects and result output.

Stdlib only (json, os): this module is on every pod start's import path.
"""

from __future__ import annotations

import os

from meshnet.errors import one_line, quote
from meshnet.lite import jsonlite as json  # the C accelerator only: `import json` costs ~8 ms per pod
from meshnet.lite.records import dataclass, field

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Well-known codes from the CNI spec (1-99 are reserved for the spec).
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11
# Plugin-specific codes (>= 100).
E_INVALID_POD_SPEC = 100  # a pod annotation (or the pod's proxy settings) is invalid
E_APPLY_FAILED = 101  # the kernel refused the rules
E_DRIFT = 102  # CHECK: the live rules differ from what the pod's annotations call for
E_INTERNAL = 999  # a bug: reported as an error object all the same, never as a traceback
DETAILS_LIMIT = 8000


class CniError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        msg = one_line(msg)  # the runtime shows msg as one line in its events; never a 100 KB value
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details[:DETAILS_LIMIT]

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise CniError(E_INCOMPATIBLE_VERSION, f"invalid cniVersion {quote(version)}") from None


def version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version:
        raise CniError(E_INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(E_INCOMPATIBLE_VERSION, f"unsupported cniVersion {quote(version)}",
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    return version


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS "K=V;K=V" -> mapping. Malformed pairs are an invalid-environment error."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(E_INVALID_ENV, f"invalid CNI_ARGS pair {quote(pair)}", "expected KEY=VALUE")
        out[key] = value
    return out


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


# Variables the spec requires per command (CNI_PATH is not needed by a plugin that calls none).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
}


def read_env(environ: Mapping[str, str] | None = None) -> CniEnv:
    env = os.environ if environ is None else environ
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(E_INVALID_ENV, f"invalid CNI_COMMAND {quote(command)}", "expected one of " + ", ".join(COMMANDS))
    missing = [name for name in _REQUIRED.get(command, ()) if not env.get(name)]
    if missing:
        raise CniError(E_INVALID_ENV, f"{command}: required environment variable(s) missing: {', '.join(missing)}")
    return CniEnv(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=env.get("CNI_PATH", ""),
    )


def decode_config(raw: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(E_DECODE, "network configuration on stdin is not valid JSON", str(exc)) from None
    if not isinstance(doc, dict):
        raise CniError(E_DECODE, "network configuration on stdin must be a JSON object")
    return doc


def version_result(requested: str | None) -> dict[str, Any]:
    version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def passthrough_result(config: Mapping[str, Any], cni_version: str) -> dict[str, Any]:
    """A chained plugin's ADD result: prevResult as given, labelled with the config's version.

    The runtime already converted prevResult to the config's version before calling us, so the
    content is passed through unchanged. With no prevResult (not chained) the result is empty.
    """
    prev = config.get("prevResult")
    result = dict(prev) if isinstance(prev, dict) else {}
    result["cniVersion"] = cni_version
    return result
