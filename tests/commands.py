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
