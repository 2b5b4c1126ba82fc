"""Run ``python -m estargz`` in benchmarks as an installed package runs: from its bytecode.

pip writes a package's bytecode when it installs it; a checkout run where PYTHONDONTWRITEBYTECODE
is set would compile every module at each start instead, a cost no installed copy pays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Where the children's bytecode goes (per source path, so checkouts do not mix).
BYTECODE_CACHE = Path.home() / ".cache" / "estargz-bench" / "bytecode"


def use_bytecode(cache: Path = BYTECODE_CACHE) -> None:
    """Let this process's children write and reuse bytecode under ``cache``, and compile estargz
    there now, so no timed run pays for it."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    subprocess.run([sys.executable, "-m", "estargz", "--version"], check=True, capture_output=True)
