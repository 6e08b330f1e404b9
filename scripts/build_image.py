#!/usr/bin/env python3
"""Build the meshnet image offline: build/images/meshnet.tar, a docker-archive tagged localhost/meshnet:dev.

No container registry is needed, only Debian's package mirror (and PyPI for the wheels, once):
* layer 1, the base: a `debootstrap --variant=minbase` Debian 12 root with the netfilter user space
  (iptables legacy+nft, nftables, iproute2, conntrack) and python3, docs/locales/apt lists stripped.
  It is cached outside the clone, keyed by a hash of its recipe, so a machine debootstraps once.
* layer 2, meshnet: the working tree's `meshnet` package, its pure/cp311 wheels, the `meshnet` and
  `meshnet-cni` commands, and /opt/meshnet/meshnet-cni (the single-file plugin the CNI installer
  copies to the node). Rebuilt from the working tree every time (a few seconds).

usage: build_image.py [--out build/images/meshnet.tar] [--ref localhost/meshnet:dev] [--cache DIR]
The same image serves istio-init, istio-validation, `kubectl debug` and the CNI DaemonSet.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = os.environ.get("MESHNET_IMAGE_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["iptables", "nftables", "iproute2", "conntrack", "python3-minimal", "libpython3.11-stdlib"]
# What the image must not carry (no compilers) and what nobody reads in a container.
STRIP = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/i18n",
         "usr/share/lintian", "usr/share/linda", "usr/share/common-licenses", "var/lib/apt/lists",
         "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log", "usr/share/bash-completion",
         "usr/share/zsh", "usr/lib/python3.11/test", "usr/lib/python3.11/ensurepip",
         "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter", "usr/lib/python3.11/lib2to3",
         "usr/lib/python3.11/pydoc_data"]
RECIPE_VERSION = "1"  # bump when the base recipe below changes in a way the key does not see
PY_SITE = "usr/local/lib/python3.11/dist-packages"  # on Debian's python3 sys.path
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg: str) -> None:
    print(f"build_image: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, timeout: float | None = None, env: dict[str, str] | None = None) -> None:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if cp.returncode != 0:
        raise SystemExit(f"build_image: {' '.join(argv[:3])} ... failed ({cp.returncode}): "
                         f"{(cp.stderr or cp.stdout).strip()[-1500:]}")


def key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ layer 1: Debian base
def ensure_tools() -> None:
    """debootstrap builds the base; skopeo, an independent reader of docker-archives, checks the result."""
    missing = [t for t in ("debootstrap", "skopeo") if not shutil.which(t)]
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)


def base_layer(cache: Path) -> Path:
    """The cached base layer tar (built under an exclusive lock; concurrent builds wait)."""
    out = cache / f"base-{key(SUITE, PACKAGES, STRIP, RECIPE_VERSION)}.tar"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        with tempfile.TemporaryDirectory(prefix="meshnet-image-", dir=cache) as tmp:
            root = Path(tmp) / "rootfs"
            log(f"debootstrap {SUITE} minbase + {' '.join(PACKAGES)} (once per machine, a few minutes)")
            run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR],
                timeout=1800)
            for rel in STRIP:
                p = root / rel
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    if rel.startswith("usr/share/") or rel.startswith("var/"):
                        p.mkdir()
                elif p.exists():
                    p.unlink()
            for pyc in root.glob("usr/lib/python3*/**/__pycache__"):
                shutil.rmtree(pyc)  # recompiled below, deterministically
            run(["chroot", str(root), "python3", "-m", "compileall", "-q", "-j0",
                 "--invalidation-mode", "unchecked-hash", "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"])
            for d in ("dev", "proc", "sys", "run", "tmp"):  # the runtime mounts these
                shutil.rmtree(root / d, ignore_errors=True)
                (root / d).mkdir()
            os.chmod(root / "tmp", 0o1777)
            part = out.with_suffix(".part")
            run(["tar", "--numeric-owner", "--sort=name", "--xattrs", "-C", str(root), "-cf", str(part), "."])
            part.rename(out)
        return out


# ------------------------------------------------------------------------------ layer 2: meshnet
def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # Not the `cri` extra (grpcio + protobuf, +24 MB): `doctor --all --cri` is a node-side tool.
    return sorted(project["dependencies"])


def deps_dir(cache: Path) -> Path:
    """meshnet's dependencies as installed for the image's CPython 3.11 (cp311 / pure wheels), cached."""
    reqs = _requirements()
    out = cache / f"deps-{key(reqs, 'manylinux2014_x86_64', 'cp311')}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        part = Path(tempfile.mkdtemp(prefix="deps-", dir=cache))
        part.chmod(0o755)
        log(f"pip install --target (cp311 wheels): {' '.join(reqs)}")
        run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(part),
             "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             "--platform", "manylinux2014_x86_64", *reqs], timeout=900)
        shutil.rmtree(part / "bin", ignore_errors=True)  # console scripts with this host's shebang
        part.rename(out)
        return out


def _ignore_pycache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]


ENTRY = "#!/usr/bin/python3 -I\nimport sys\nfrom {mod} import main\nsys.exit(main())\n"


def meshnet_layer(deps: Path, work: Path) -> Path:
    stage = work / "stage"
    site = stage / PY_SITE
    shutil.copytree(deps, site, ignore=_ignore_pycache)
    shutil.copytree(REPO / "meshnet", site / "meshnet", ignore=_ignore_pycache)
    bindir = stage / "usr/local/bin"
    bindir.mkdir(parents=True)
    (bindir / "meshnet").write_text(ENTRY.format(mod="meshnet.cli.main"))
    (bindir / "meshnet").chmod(0o755)
    # The plugin file the installer copies to the node; inside the image it is the meshnet-cni command.
    from meshnet.cni.bundle import build

    optdir = stage / "opt/meshnet"
    optdir.mkdir(parents=True)
    build(optdir / "meshnet-cni", python="/usr/bin/python3")
    (bindir / "meshnet-cni").symlink_to("/opt/meshnet/meshnet-cni")
    # Bytecode made at build time by Debian 12's own python3 (the image's), hash-checked so the
    # clamped tar mtimes do not invalidate it: a pod start never compiles and never writes.
    compiler = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    run([compiler, "-I", "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
         "-s", str(stage), "-p", "/", str(site)])
    _normalise_modes(stage)
    layer = work / "meshnet-layer.tar"
    run(["tar", "--numeric-owner", "--owner=0", "--group=0", "--sort=name", "--mtime=@0", "-C", str(stage),
         "-cf", str(layer), "."])
    return layer


def _normalise_modes(stage: Path) -> None:
    """Readable by every uid (the validation container runs as 1337); executables stay executable."""
    for top, _dirs, files in os.walk(stage):
        os.chmod(top, 0o755)
        for name in files:
            p = Path(top, name)
            if not p.is_symlink():
                p.chmod(0o755 if p.stat().st_mode & 0o100 else 0o644)


# ------------------------------------------------------------------------------ docker-archive
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_archive(layers: list[Path], out: Path, ref: str) -> None:
    """docker save format (manifest.json + config + one dir per layer): `ctr images import`, `docker load`."""
    diff_ids = [_digest(p) for p in layers]
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["meshnet"], "Env": [ENV_PATH, "PYTHONDONTWRITEBYTECODE=1"], "WorkingDir": "/",
                   "Labels": {"org.opencontainers.image.title": "meshnet",
                              "org.opencontainers.image.source": "meshnet scripts/build_image.py"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": f"debootstrap --variant=minbase {SUITE} + {' '.join(PACKAGES)}"},
                    {"created_by": "meshnet working tree + cp311 wheels (scripts/build_image.py)"}],
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_names = [f"{d}/layer.tar" for d in diff_ids]
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": layer_names}]
    name, _, tag = ref.rpartition(":")
    repositories = {name: {tag: diff_ids[-1]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part{os.getpid()}")
    with tarfile.open(part, "w") as t:
        for layer, arc in zip(layers, layer_names, strict=True):
            t.add(str(layer), arcname=arc, filter=_clamp)
        for arc, data in ((cfg_name, cfg), ("manifest.json", json.dumps(manifest).encode()),
                          ("repositories", json.dumps(repositories).encode())):
            ti = tarfile.TarInfo(arc)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            t.addfile(ti, io.BytesIO(data))
    part.rename(out)


def _clamp(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    ti.mode = 0o644
    return ti


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "build/images/meshnet.tar"))
    ap.add_argument("--ref", default=os.environ.get("MESHNET_IMAGE", "localhost/meshnet:dev"))
    ap.add_argument("--cache", default=os.environ.get("MESHNET_IMAGE_CACHE", "/var/cache/meshnet-image"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("build_image: needs root (debootstrap, chroot)", file=sys.stderr)
        return 2
    cache = Path(a.cache)
    ensure_tools()
    base = base_layer(cache)
    deps = deps_dir(cache)
    with tempfile.TemporaryDirectory(prefix="meshnet-image-") as tmp:
        layer = meshnet_layer(deps, Path(tmp))
        write_archive([base, layer], Path(a.out), a.ref)
    run(["skopeo", "inspect", f"docker-archive:{a.out}"], timeout=120)  # what `docker load` must read
    size = Path(a.out).stat().st_size
    log(f"{a.out}: {a.ref}, {size / 1e6:.1f} MB (base {base.stat().st_size / 1e6:.1f} MB)")
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
