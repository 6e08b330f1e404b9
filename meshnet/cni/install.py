"""Insert/remove the meshnet-cni entry in a conflist and place/remove the plugin executable.

Every write is atomic (temp file in the same directory, fsync, os.replace), so a runtime reading
the conflist or exec'ing the plugin concurrently sees the old or the new file, never half of one.
Install writes the executable before the conflist, uninstall removes the conflist entry first:
a conflist never names a plugin that is not there.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshnet.cni.config import ANNOTATIONS_CAPABILITY
from meshnet.errors import MeshnetError

PLUGIN_TYPE = "meshnet-cni"


class InstallError(MeshnetError):
    """The conflist or the bin dir cannot be read or written."""


def plugin_entry(options: Mapping[str, Any]) -> dict[str, Any]:
    """The conflist entry: our type, the annotations capability, and only the options given."""
    entry: dict[str, Any] = {"type": PLUGIN_TYPE}
    entry.update({k: v for k, v in options.items() if v not in (None, "", [], {})})
    entry["capabilities"] = {ANNOTATIONS_CAPABILITY: True}
    return entry


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_conflist(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InstallError(f"cannot read conflist {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InstallError(f"conflist {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("plugins"), list):
        raise InstallError(f"{path} is not a conflist (no \"plugins\" list); chain meshnet-cni into a .conflist")
    return doc


def _write_conflist(path: Path, doc: Mapping[str, Any]) -> None:
    mode = path.stat().st_mode & 0o7777
    _atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), mode)


def insert_entry(doc: dict[str, Any], entry: Mapping[str, Any]) -> bool:
    """Put `entry` in place of an existing meshnet-cni entry, else last. True if doc changed."""
    plugins: list[Any] = doc["plugins"]
    ours = [i for i, p in enumerate(plugins) if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]
    if ours and len(ours) == 1 and plugins[ours[0]] == entry:
        return False
    for index in reversed(ours[1:]):  # duplicates from a hand edit: keep one
        del plugins[index]
    if ours:
        plugins[ours[0]] = dict(entry)
    else:
        plugins.append(dict(entry))
    return True


def remove_entry(doc: dict[str, Any]) -> bool:
    before = len(doc["plugins"])
    doc["plugins"] = [p for p in doc["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return len(doc["plugins"]) != before


def _place_binary(source: Path, bin_dir: Path) -> bool:
    target = bin_dir / PLUGIN_TYPE
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        return False
    bin_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, data, 0o755)
    return True


def install(conflist: Path, bin_dir: Path, plugin_file: Path, options: Mapping[str, Any]) -> list[str]:
    """Returns what changed, one line each (empty: already installed as asked)."""
    doc = read_conflist(conflist)  # before touching anything: a bad conflist changes nothing
    done = []
    try:
        if _place_binary(plugin_file, bin_dir):
            done.append(f"installed {bin_dir / PLUGIN_TYPE}")
        if insert_entry(doc, plugin_entry(options)):
            _write_conflist(conflist, doc)
            done.append(f"added {PLUGIN_TYPE} to {conflist}")
    except OSError as exc:
        raise InstallError(f"install failed: {exc.filename or ''}: {exc.strerror}") from None
    return done


def uninstall(conflist: Path, bin_dir: Path) -> list[str]:
    done = []
    try:
        if conflist.exists():
            doc = read_conflist(conflist)
            if remove_entry(doc):
                _write_conflist(conflist, doc)
                done.append(f"removed {PLUGIN_TYPE} from {conflist}")
        target = bin_dir / PLUGIN_TYPE
        if target.exists():
            target.unlink()
            done.append(f"removed {target}")
    except OSError as exc:
        raise InstallError(f"uninstall failed: {exc.filename or ''}: {exc.strerror}") from None
    return done


def pick_conflist(conf_dir: Path) -> Path:
    """The file a runtime would use: the first .conf/.conflist/.json of the directory in name order
    (read_conflist then refuses it if it is not a conflist)."""
    try:
        names = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json") and p.is_file())
    except OSError as exc:
        raise InstallError(f"cannot list {conf_dir}: {exc.strerror}") from None
    if not names:
        raise InstallError(f"no CNI configuration in {conf_dir}: install the main CNI plugin first")
    return names[0]
