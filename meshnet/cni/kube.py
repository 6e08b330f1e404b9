"""Fetch one Pod (or Namespace) from the Kubernetes API with a kubeconfig, using only the standard library.

Only the plugin configurations that name a kubeconfig come here, so ssl/urllib (and PyYAML for a
YAML kubeconfig) are imported lazily by the caller's first use.
"""

from __future__ import annotations

import base64
import os
import tempfile
from urllib.parse import quote

from meshnet.cni.protocol import E_INVALID_CONFIG, E_TRY_AGAIN, CniError
from meshnet.lite import jsonlite as json  # the C accelerator only: `import json` costs ~8 ms per pod
from meshnet.lite.records import dataclass

TYPE_CHECKING = False  # collections.abc/typing imports cost ms at pod start: type checkers only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


@dataclass(frozen=True)
class KubeTarget:
    server: str
    token: str = ""
    ca_file: str = ""
    ca_data: bytes = b""
    cert_data: bytes = b""
    key_data: bytes = b""
    insecure: bool = False


def _bad(path: str, reason: str) -> CniError:
    return CniError(E_INVALID_CONFIG, f"kubeconfig {path}: {reason}")


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml  # lazy: most kubeconfigs are YAML, but only this path pays for it
        except ImportError:
            raise _bad(path, "not JSON, and PyYAML is not available to read YAML") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _bad(path, f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "expected a mapping")
    return doc


def _named(doc: Mapping[str, Any], kind: str, name: str, path: str) -> dict[str, Any]:
    for item in doc.get(kind + "s") or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(kind), dict):
            return item[kind]
    raise _bad(path, f"no {kind} named {name!r}")


def _file_or_data(entry: Mapping[str, Any], key: str, base: str, path: str) -> bytes:
    data = entry.get(f"{key}-data")
    if isinstance(data, str) and data:
        try:
            return base64.b64decode(data, validate=True)
        except ValueError:
            raise _bad(path, f"{key}-data is not base64") from None
    ref = entry.get(key)
    if isinstance(ref, str) and ref:
        try:
            with open(os.path.join(base, ref), "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise _bad(path, f"{key} {ref}: {exc.strerror}") from None
    return b""


def load_kubeconfig(path: str) -> KubeTarget:
    doc = _load(path)
    base = os.path.dirname(os.path.abspath(path))
    context_name = doc.get("current-context")
    if not isinstance(context_name, str) or not context_name:
        raise _bad(path, "no current-context")
    context = _named(doc, "context", context_name, path)
    cluster = _named(doc, "cluster", str(context.get("cluster", "")), path)
    user = _named(doc, "user", str(context.get("user", "")), path) if context.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise _bad(path, f"cluster server {server!r} is not an http(s) URL")
    raw_token = user.get("token")
    token = raw_token if isinstance(raw_token, str) else ""
    if not token and isinstance(user.get("tokenFile"), str):
        token = _file_or_data({"token": user["tokenFile"]}, "token", base, path).decode().strip()
    return KubeTarget(
        server=server.rstrip("/"),
        token=token,
        ca_data=_file_or_data(cluster, "certificate-authority", base, path),
        cert_data=_file_or_data(user, "client-certificate", base, path),
        key_data=_file_or_data(user, "client-key", base, path),
        insecure=cluster.get("insecure-skip-tls-verify") is True,
    )


def _ssl_context(target: KubeTarget) -> Any:
    import ssl  # lazy: only https API servers need it

    ctx = ssl.create_default_context(cadata=target.ca_data.decode() if target.ca_data else None)
    if target.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if target.cert_data and target.key_data:
        # ssl loads client credentials from files only: a private temp dir, removed at once.
        with tempfile.TemporaryDirectory(prefix="meshnet-cni-") as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for fname, data in ((cert, target.cert_data), (key, target.key_data)):
                fd = os.open(fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            ctx.load_cert_chain(cert, key)
    return ctx


def get_pod(target: KubeTarget, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
    return _get_object(target, path, f"pod {namespace}/{name}", timeout)


def get_namespace(target: KubeTarget, namespace: str, timeout: float) -> dict[str, Any]:
    """The Namespace object (ambient enrolment reads its labels, as istio-cni's namespace informer)."""
    return _get_object(target, f"/api/v1/namespaces/{quote(namespace, safe='')}", f"namespace {namespace}", timeout)


def _get_object(target: KubeTarget, path: str, what: str, timeout: float) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    url = f"{target.server}{path}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if target.token:
        request.add_header("Authorization", f"Bearer {target.token}")
    context = _ssl_context(target) if url.startswith("https://") else None
    where = f"{what} from {target.server}"
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        # 401/403 will not fix themselves; anything else (404 before the API caught up, 5xx, 429) may.
        code = E_INVALID_CONFIG if exc.code in (401, 403) else E_TRY_AGAIN
        raise CniError(code, f"cannot get {where}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CniError(E_TRY_AGAIN, f"cannot get {where}: {reason}") from None
    try:
        obj = json.loads(body)
    except ValueError:
        raise CniError(E_TRY_AGAIN, f"cannot get {where}: the response is not JSON") from None
    if not isinstance(obj, dict):
        raise CniError(E_TRY_AGAIN, f"cannot get {where}: the response is not an object")
    return obj
