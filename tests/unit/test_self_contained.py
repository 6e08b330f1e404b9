"""The repository is self-contained (issue 12): the tests need nothing beside the clone.

Istio's goldens are vendored unmodified (tests/golden/istio, checked against SHA256SUMS), the libcni
runner and the CRI node are our own code under tests/harness/, and no test, script or the `make test`
recipe names the old ../shared tree. The one documented exception is the `make test-vm` tier
(tests/vm/run-vm-tier.sh), which boots an old-kernel VM image kept outside the repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from harness import cni_helpers, crinode_tool, golden_cases

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|/work/shared|MESHNET_SHARED")
ALLOWED = {REPO / "tests" / "vm" / "run-vm-tier.sh", Path(__file__).resolve()}


def test_goldens_are_byte_identical_to_the_vendored_set() -> None:
    sums = {}
    for line in (golden_cases.GOLDEN / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    on_disk = {p.relative_to(golden_cases.GOLDEN).as_posix() for p in golden_cases.GOLDEN.rglob("*.golden")}
    assert set(sums) == on_disk and len(sums) == 70
    changed = [n for n, d in sums.items() if hashlib.sha256((golden_cases.GOLDEN / n).read_bytes()).hexdigest() != d]
    assert changed == [], f"vendored Istio goldens must not be edited: {changed}"
    provenance = (golden_cases.GOLDEN / "PROVENANCE.md").read_text()
    assert "2300e2458ab713c2c514a58da1ea8b03343ada7e" in provenance and "Apache" in provenance
    assert (golden_cases.GOLDEN / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_harness_paths_resolve_inside_the_repo() -> None:
    for path in (golden_cases.GOLDEN, cni_helpers.CNIRUN_SRC, crinode_tool.CRINODE, crinode_tool.CRI_PY,
                 crinode_tool.API_PROTO):
        assert path.resolve().is_relative_to(REPO), path
        assert path.exists(), path
    assert os.access(crinode_tool.CRINODE, os.X_OK)


def _code_files() -> list[Path]:
    files = [REPO / "Makefile", REPO / ".ci" / "run", *sorted((REPO / "scripts").rglob("*"))]
    for ext in ("*.py", "*.sh", "*.go", "*.in", "crinode"):
        files += sorted((REPO / "tests").rglob(ext))
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def test_no_test_or_script_reads_outside_the_repo() -> None:
    hits = []
    for f in _code_files():
        if f in ALLOWED:
            continue
        text = f.read_text(errors="replace")
        if f.name == "Makefile":  # only comments and the documented test-vm tier may name it
            text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        hits += [f"{f.relative_to(REPO)}:{n}" for n, ln in enumerate(text.splitlines(), 1) if OUTSIDE.search(ln)]
    assert hits == []


def test_golden_suite_passes_with_shared_pointing_nowhere(tmp_path: Path) -> None:
    env = {**os.environ, "MESHNET_SHARED": str(tmp_path / "no-such-shared")}
    cp = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_golden.py",
                         "tests/unit/test_ambient_golden.py"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stdout[-3000:]
    assert re.search(r"\b\d{2,} passed", cp.stdout), cp.stdout[-500:]
