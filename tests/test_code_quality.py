"""The package stays lint-clean, strictly typed, print-free and pickle-free."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff_is_clean():
    result = run("ruff", "check", "evq", "tests", "tools")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean():
    result = run("mypy", "--strict", "evq")
    assert result.returncode == 0, result.stdout + result.stderr


def test_library_never_prints_and_never_pickles():
    offenders = []
    for path in (ROOT / "evq").rglob("*.py"):
        text = path.read_text()
        # The command's modules (evq/cli*.py) are the application: they print.
        if not path.name.startswith("cli") and re.search(r"^\s*print\(", text, re.M):
            offenders.append(f"{path.name}: print")
        if re.search(r"^\s*(import pickle|from pickle)", text, re.M):
            offenders.append(f"{path.name}: pickle")
    assert offenders == []
