"""Build `meshnet-cni` as one executable file (a zipapp) that runs with the node's python3, no venv.

The archive holds the meshnet package (minus the click CLI) and the pure-Python dependencies the
ADD path may import, each module as source plus an unchecked-hash .pyc compiled by the target
interpreter: zipimport cannot write bytecode caches, so without the .pyc every pod start would
recompile every module. If the node's python is another version, the .pyc is ignored (bad magic)
and zipimport falls back to the source: slower, still correct.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipapp
from collections.abc import Iterator
from pathlib import Path

DEFAULT_INTERPRETER = "/usr/bin/python3"
# Pure-Python packages the plugin may import lazily: yaml for a YAML kubeconfig or proxy config,
# pyroute2 for TPROXY policy routing (and the routing part of DEL/CHECK).
OPTIONAL_PACKAGES = ("yaml", "pyroute2")
_EXCLUDED = ("meshnet/cli",)
MIN_PYTHON = (3, 11)
# Isolated (no PYTHON* variables from the runtime's environment, no user site) and no `site`:
# the archive is self-contained, and Debian's site processing alone costs ~10-20 ms per pod.
INTERPRETER_FLAGS = "-IS"

_NEED = ".".join(map(str, MIN_PYTHON))
# No json here: the error object is written by hand so the agent path imports nothing extra.
MAIN = f'''\
import sys
if sys.version_info < {MIN_PYTHON!r}:
    sys.stdout.write('{{"cniVersion": "1.1.0", "code": 999, "details": "", "msg": "meshnet-cni needs Python '
                     '>= {_NEED}, this is ' + sys.version.split()[0] + '"}}\\n')
    sys.exit(1)
from meshnet.cni.shim import main
main()
'''

_COMPILE = """\
import json, py_compile, sys
for src, cfile, dfile in json.load(sys.stdin):
    py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def _package_dir(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _sources(root: Path, package: str) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*.py")):
        arcname = f"{package}/{path.relative_to(root).as_posix()}"
        if "__pycache__" in arcname or any(arcname.startswith(ex + "/") for ex in _EXCLUDED):
            continue
        yield path, arcname


def _compiler(python: str) -> str:
    """Compile with the target interpreter when it is here, else with this one."""
    return python if os.access(python, os.X_OK) else sys.executable


def launcher(python: str) -> bytes:
    """A two-line sh header in front of the zip data.

    Run directly (`python3 file.pyz`) the file is an ordinary zipapp, but then Python starts it
    through runpy, whose importlib.util/contextlib imports cost ~9 ms per pod. Exec'd by a CNI
    runtime, sh reads only these lines and execs python with the file itself on sys.path, so
    zipimport loads the plugin directly. (Data in front of a zip is allowed; zipapp shebangs rely
    on it too.)
    """
    code = ("import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[0]; "
            "exec(compile(__import__('zipimport').zipimporter(sys.argv[0]).get_source('__main__'), "
            "'__main__', 'exec'))")
    return f"#!/bin/sh\nexec {python} {INTERPRETER_FLAGS} -c \"{code}\" \"$0\" \"$@\"\n".encode()


def build(out: str | os.PathLike[str], python: str = DEFAULT_INTERPRETER) -> Path:
    """Write the plugin to `out` (atomically): sh launcher + zipapp (see `launcher`)."""
    meshnet_dir = _package_dir("meshnet")
    if meshnet_dir is None:
        raise RuntimeError("the meshnet package is not importable")
    files = list(_sources(meshnet_dir, "meshnet"))
    for name in OPTIONAL_PACKAGES:
        pkg = _package_dir(name)
        if pkg is not None:
            files.extend(_sources(pkg, name))
    out_path = Path(out)
    with tempfile.TemporaryDirectory(prefix="meshnet-cni-build-") as tmp:
        stage = Path(tmp) / "app"
        jobs = []
        for src, arcname in files:
            dest = stage / arcname
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
            jobs.append((str(dest), str(dest.with_suffix(".pyc")), arcname))
        (stage / "__main__.py").write_text(MAIN)
        subprocess.run([_compiler(python), "-I", "-c", _COMPILE], input=json.dumps(jobs), text=True,
                       check=True, capture_output=True)
        tmp_out = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
        try:
            zipapp.create_archive(stage, tmp_out)
            tmp_out.write_bytes(launcher(python) + tmp_out.read_bytes())
            os.chmod(tmp_out, 0o755)
            os.replace(tmp_out, out_path)
        finally:
            tmp_out.unlink(missing_ok=True)
    return out_path
