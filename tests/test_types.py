"""mypy (default settings) is clean over the package: the type hints are checked, not decoration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean_over_the_package():
    pytest.importorskip("mypy", reason="mypy comes with the test extras (scripts/test.sh installs it)")
    cache = ROOT / ".mypy_cache"
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "coze_speaker"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
