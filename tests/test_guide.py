"""Every ``python`` block of the user's guide runs, in order, in one namespace, as a reader would run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("pyspark")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
pytestmark = pytest.mark.spark


def test_the_guides_code_runs(spark):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "guide"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{GUIDE}:block{i + 1}", "exec"), namespace)
    assert namespace["accuracy"] > 0.85
