"""Every ``python`` block of the user's guide runs, in order, in one namespace, as a reader would run it."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from zdk import algorithms

pytest.importorskip("keras")
pytest.importorskip("pyspark")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
pytestmark = pytest.mark.spark


def test_the_guides_code_runs(spark, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 4
    # A block starting "# file: NAME.py" is a module the reader saves: written where this process,
    # the shards and the lab's workers import it from (they inherit PYTHONPATH).
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    namespace: dict = {"__name__": "guide"}
    saved = []
    try:
        for i, block in enumerate(blocks):
            name = re.match(r"# file: (\w+)\.py\n", block)
            if name:
                (tmp_path / f"{name.group(1)}.py").write_text(block)
                saved.append(name.group(1))
                continue
            exec(compile(block, f"{GUIDE}:block{i + 1}", "exec"), namespace)
    finally:
        for module in saved:
            sys.modules.pop(module, None)
        algorithms.unregister("guide-momentum")
    assert saved == ["my_research"]
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
