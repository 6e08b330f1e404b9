"""Reading a support bundle: in memory only (nothing is extracted), sizes bounded, JSON only."""

from __future__ import annotations

import json
import tarfile
import zlib
from typing import TYPE_CHECKING, Any

from meshnet.diagnose.bundle.source import Replay
from meshnet.errors import MeshnetError
from meshnet.lite.records import dataclass

if TYPE_CHECKING:
    from meshnet.diagnose.conntrack.snapshot import Snapshot

MAX_MEMBER = 256 << 20


class BundleError(MeshnetError):
    exit_code = 2


@dataclass
class BundlePod:
    label: str
    pod: dict[str, Any]
    source: Replay
    host: Replay | None
    conntrack: dict[str, Any] | None
    conntrack_error: str | None
    doctor: dict[str, Any]  # what doctor found while collecting

    def snapshot(self) -> Snapshot:
        from meshnet.diagnose.conntrack import snapshot_json

        if self.conntrack is None:
            raise BundleError(f"{self.label}: the bundle has no conntrack table ({self.conntrack_error})")
        try:
            return snapshot_json.load(self.conntrack)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{self.label}: malformed conntrack record ({type(exc).__name__}: {exc})") from None


@dataclass
class Bundle:
    path: str
    node: dict[str, Any]
    pods: list[BundlePod]

    def select(self, label: str | None) -> list[BundlePod]:
        if label is None:
            return self.pods
        chosen = [p for p in self.pods if label in (p.label, p.pod.get("name"), p.source.path)]
        if not chosen:
            raise BundleError(f"{self.path}: no pod {label!r} in the bundle (has: "
                              f"{', '.join(p.label for p in self.pods) or 'none'})")
        return chosen


def read_bundle(path: str) -> Bundle:
    try:
        tar = tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except (tarfile.TarError, OSError, EOFError):
        raise BundleError(f"{path}: not a meshnet support bundle (not a tar archive)") from None
    try:
        with tar:
            return _read(tar, path)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{path}: damaged bundle ({type(exc).__name__})") from None


def _read(tar: tarfile.TarFile, path: str) -> Bundle:
    manifest = _json(tar, path, "manifest.json")
    if str(manifest.get("format", "")).split("/")[0] != "meshnet-support-bundle":
        raise BundleError(f"{path}: not a meshnet support bundle (format {manifest.get('format')!r})")
    pods = []
    try:
        for entry in manifest.get("pods", []):
            rec = _json(tar, path, f"{entry['dir']}/record.json")
            host = rec.get("host")
            pods.append(BundlePod(
                label=rec["label"], pod=rec.get("pod") or {},
                source=Replay(rec["label"], rec["path"], rec["record"]),
                host=Replay(rec.get("host_label") or "host", rec.get("host_path") or "host", host) if host else None,
                conntrack=rec.get("conntrack"), conntrack_error=rec.get("conntrack_error"),
                doctor=rec.get("doctor") or {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: malformed bundle record ({type(exc).__name__}: {exc})") from None
    return Bundle(path, manifest.get("node", {}), pods)


def _json(tar: tarfile.TarFile, path: str, name: str) -> dict[str, Any]:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BundleError(f"{path}: {name} missing: not a meshnet support bundle") from None
    if not member.isfile() or member.size > MAX_MEMBER:
        raise BundleError(f"{path}: {name} is not a regular file of sane size")
    f = tar.extractfile(member)
    if f is None:
        raise BundleError(f"{path}: {name} unreadable")
    try:
        data = json.loads(f.read())
    except ValueError as exc:
        raise BundleError(f"{path}: {name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: {name} is not a JSON object")
    return data
