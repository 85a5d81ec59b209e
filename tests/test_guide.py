"""Every ``python`` block of the user's guide runs, in order, in one namespace, as a reader would run it."""

from __future__ import annotations

import re
import shutil
import warnings
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


README = GUIDE.parents[1] / "README.md"


def test_the_readme_tour_runs(spark, tmp_path):
    text = README.read_text()
    tour = re.search(r"## A tour.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "tour"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(tour, f"{README}:tour", "exec"), namespace)
    finally:
        shutil.rmtree(namespace.get("where", tmp_path), ignore_errors=True)
    assert namespace["restored"].count_params() == namespace["trained"].count_params()
    # Saved models and pipelines load without Keras's optimizer-variable warning.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
