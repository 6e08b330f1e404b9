"""`meshnet-cni`: a chained CNI plugin that programs Istio's sidecar interception in the pod.

The runtime execs this for every pod sandbox, so the import path is kept to the stdlib, the
spec/rule modules and the applier: no click, no yaml, no scapy (see bench/cni.py).
Whatever happens, the runtime gets a CNI result or a CNI error object on stdout, never a traceback.
"""

from __future__ import annotations

import os
import sys

from meshnet.cni.protocol import (
    E_INTERNAL,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    decode_config,
    read_env,
    version_result,
)
from meshnet.lite import jsonlite as json  # the C accelerator only: `import json` costs ~8 ms per pod

TYPE_CHECKING = False  # typing costs ~4 ms to import: only type checkers need it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any


def _emit(out: IO[str], obj: Mapping[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _dispatch(raw: bytes, environ: Mapping[str, str], out: IO[str]) -> None:
    env = read_env(environ)
    if env.command == "VERSION":
        requested = None
        if raw.strip():
            requested = decode_config(raw).get("cniVersion")
        _emit(out, version_result(requested if isinstance(requested, str) else None))
        return
    doc = decode_config(raw)
    from meshnet.cni.commands import HANDLERS
    from meshnet.cni.config import parse_config
    from meshnet.cni.log import Log

    config = parse_config(doc)
    log = Log(config.log_file, config.log_level,
              f"{env.command} {env.pod_namespace}/{env.pod_name} {env.container_id[:12]}")
    try:
        result = HANDLERS[env.command](env, config, doc, log)
    except CniError as exc:
        log.error(exc.msg, code=exc.code, details=exc.details)
        raise
    if result is not None:
        _emit(out, result)


def _error_version(raw: bytes) -> str:
    """The version to label an error with: the config's if it is one we speak."""
    try:
        version = json.loads(raw).get("cniVersion")
    except Exception:
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def run(stdin: IO[bytes], out: IO[str], environ: Mapping[str, str]) -> int:
    raw = b""
    try:
        raw = stdin.read()
        _dispatch(raw, environ, out)
        return 0
    except CniError as exc:
        _emit(out, exc.to_dict(_error_version(raw)))
    except Exception as exc:  # a bug: still a CNI error object, with the type to report it
        err = CniError(E_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        _emit(out, err.to_dict(_error_version(raw)))
    return 1


def main() -> None:
    sys.exit(run(sys.stdin.buffer, sys.stdout, os.environ))


if __name__ == "__main__":
    main()
