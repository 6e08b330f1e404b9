"""The posix_spawn runner behind Netns.run: same results as subprocess.run, fewer imports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshnet.lite import spawn


def test_captures_stdout_stderr_and_status() -> None:
    cp = spawn.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (cp.returncode, cp.stdout, cp.stderr) == (3, "out\n", "err\n")


def test_feeds_input_larger_than_a_pipe_buffer() -> None:
    payload = "x" * 1_000_000 + "\n"
    cp = spawn.run(["cat"], input=payload)
    assert cp.returncode == 0 and cp.stdout == payload


def test_no_input_means_dev_null_not_the_terminal() -> None:
    cp = spawn.run(["cat"], timeout=5)
    assert cp.returncode == 0 and cp.stdout == ""


def test_child_that_stops_reading_does_not_hang_the_writer() -> None:
    cp = spawn.run(["sh", "-c", "exit 7"], input="y" * 2_000_000, timeout=10)
    assert cp.returncode == 7


def test_timeout_kills_the_child() -> None:
    start = time.monotonic()
    with pytest.raises(spawn.SpawnTimeout):
        spawn.run(["sleep", "5"], timeout=0.3)
    assert time.monotonic() - start < 2


def test_missing_program_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        spawn.run(["meshnet-no-such-program"])


def test_env_replaces_the_environment() -> None:
    cp = spawn.run(["sh", "-c", "echo ${FOO:-unset} ${HOME:-nohome}"], env={"FOO": "bar", "PATH": "/usr/bin:/bin"})
    assert cp.stdout == "bar nohome\n"


def test_killed_by_signal_is_negative_like_subprocess() -> None:
    cp = spawn.run(["sh", "-c", "kill -9 $$"])
    assert cp.returncode == -9 == subprocess.run(["sh", "-c", "kill -9 $$"]).returncode


def test_importing_it_does_not_import_subprocess() -> None:
    code = "import sys, meshnet.lite.spawn; print('subprocess' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unsupported_subprocess_options_are_type_errors() -> None:
    for option in ({"check": True}, {"shell": True}, {"cwd": "/"}, {"capture_output": True}):
        with pytest.raises(TypeError):
            spawn.run(["true"], **option)


def test_missing_or_unrunnable_program_raises_what_subprocess_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn.run(["/nonexistent/meshnet-no-such-program"])
    data = tmp_path / "data"
    data.write_text("not a program\n")
    data.chmod(0o644)
    for path in (str(data), str(tmp_path)):  # no exec bit; a directory
        with pytest.raises(OSError) as theirs:
            subprocess.run([path])
        with pytest.raises(OSError) as ours:
            spawn.run([path])
        assert type(ours.value) is type(theirs.value) and ours.value.errno == theirs.value.errno
