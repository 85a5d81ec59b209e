"""The library type-checks with mypy, as pyzmq's does in its tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors_in_zdk():
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "zdk"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
