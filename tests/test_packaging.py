"""Packaging: the supported Python versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The oldest Python that pyproject.toml's requires-python admits.
OLDEST_PYTHON = "3.10"


def test_code_needs_nothing_newer_than_the_oldest_supported_python() -> None:
    """No interpreter of that version is at hand, so vermin checks syntax and stdlib APIs
    (functions, modules and keyword arguments) against it."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
         "--no-tips", "--violations", "--eval-annotations", f"-t={OLDEST_PYTHON}-",
         str(ROOT / "estargz"), str(ROOT / "tests")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"requires-python = \">={OLDEST_PYTHON}\"" in (ROOT / "pyproject.toml").read_text()

