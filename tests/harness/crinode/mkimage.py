#!/usr/bin/env python3
"""Write a docker-archive tarball (the `docker save` format) with one layer: the files of ROOTFS.

usage: mkimage.py ROOTFS OUT.tar REF [ENTRYPOINT...]
Deterministic (uid/gid 0, mtime 0), standard library only; `ctr images import` reads it. crinode
builds its pause image with it (no registry is ever contacted).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile


def layer_of(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for top, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(top, name)
                info = t.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as f:
                        t.addfile(info, f)
                else:
                    t.addfile(info)
    return buf.getvalue()


def write_image(rootfs: str, out: str, ref: str, entrypoint: list[str]) -> None:
    layer = layer_of(rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "WorkingDir": "/", "User": "65535:65535"},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "history": [{"created_by": "meshnet tests/harness/crinode/mkimage.py"}]}
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_path = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": [layer_path]}]
    with tarfile.open(out, "w") as t:
        for name, data in ((layer_path, layer), (cfg_name, cfg), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            t.addfile(info, io.BytesIO(data))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not os.path.isdir(argv[0]):
        print("usage: mkimage.py ROOTFS OUT.tar REF [ENTRYPOINT...] (ROOTFS a directory)", file=sys.stderr)
        return 2
    write_image(argv[0], argv[1], argv[2], argv[3:] or ["/pause"])
    print(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
