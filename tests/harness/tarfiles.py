"""Reading members of the archives the tests inspect (support bundles, image tarballs)."""

from __future__ import annotations

import tarfile
from typing import IO


def member(tar: tarfile.TarFile, name: str | tarfile.TarInfo) -> IO[bytes]:
    """A regular file of the archive; a missing or non-regular member is an error, never None."""
    f = tar.extractfile(name)
    if f is None:
        raise FileNotFoundError(f"{tar.name!s}: {name} is not a regular file")
    return f
