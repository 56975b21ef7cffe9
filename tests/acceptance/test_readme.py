"""Every complete Python example in the README runs as it stands, pasted into a file in
an empty folder: programs with `python FILE`, tests with pytest. What fails here fails
for every reader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
DEADLINE = 120  # seconds; a hung example fails instead of stalling the suite


def examples() -> list[tuple[str, str]]:
    """(name, code) of each ```python block that starts at the left margin with an
    import: the complete ones (indented blocks inside lists are fragments)."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.S | re.M)
    found = []
    for code in blocks:
        if not code.startswith("import"):
            continue
        title = re.search(r"^(?:async )?def (\w+)", code, re.M)
        found.append((title.group(1) if title else f"block{len(found)}", code))
    return found


EXAMPLES = examples()


def test_the_readme_has_its_examples():
    names = [name for name, _ in EXAMPLES]
    assert len(names) >= 7, names


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_readme_example_runs_as_it_stands(name: str, code: str, tmp_path: Path):
    if re.search(r"^async def test_", code, re.M):
        (tmp_path / "test_example.py").write_text(code)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
                   "test_example.py"]
    else:
        (tmp_path / "example.py").write_text(code)
        command = [sys.executable, "example.py"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
