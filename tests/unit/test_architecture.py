"""The import contract in pyproject.toml ([tool.importlinter]) holds: layers point one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_imports_point_one_way_and_the_pure_layers_import_no_infrastructure() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],  # reads [tool.importlinter] from pyproject.toml in ROOT
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"import contract broken:\n{result.stdout}\n{result.stderr}"
