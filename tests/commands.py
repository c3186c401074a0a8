"""Run the installed ``cronledger`` console script as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def cronledger_executable() -> str:
    """Return the console script of the interpreter running the tests."""
    beside_python = Path(sys.executable).with_name("cronledger")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("cronledger")
    assert found, "the cronledger console script is not installed: pip install -e ."
    return found


CRONLEDGER = cronledger_executable()


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``cronledger ARGS`` to its end and return its exit status and output."""
    return subprocess.run(
        [CRONLEDGER, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def run_together(
    commands: list[list[str]], start_file: Path, timeout: float
) -> list[tuple[str, str]]:
    """Start ``commands``, release them at once, and return their stdout and stderr.

    Each command prints "ready" and then waits until ``start_file`` exists, so
    all of them reach the code under test at the same moment. A command that
    does not start, or does not exit 0, fails the test.
    """
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line == "ready\n", f"process {process.pid} did not start: {line!r}"
        start_file.touch()
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"process {process.pid} failed: {stderr}"
    return outputs
