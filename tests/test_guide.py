"""Every ``python`` block of the user's guide runs, in order, in one namespace, as a reader would run it."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from zdk import algorithms

pytest.importorskip("keras")
pytest.importorskip("pyspark")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
pytestmark = pytest.mark.spark


def temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def remove_temp_entries_named_in(namespace: dict, before: set[str]) -> None:
    """Removes what the docs' code made in the temp directory and named in ``namespace``
    (``logs = tempfile.mkdtemp()``): it leaves that to the reader, the test may not."""
    root = tempfile.gettempdir()
    for value in list(namespace.values()):
        if not (isinstance(value, str) and os.path.dirname(value) == root and os.path.basename(value) not in before):
            continue
        if os.path.isdir(value):
            shutil.rmtree(value, ignore_errors=True)
        elif os.path.isfile(value):
            os.remove(value)


def test_the_guides_code_runs(spark, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 4
    # A block starting "# file: NAME.py" is a module the reader saves: written where this process,
    # the shards and the lab's workers import it from (they inherit PYTHONPATH).
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    namespace: dict = {"__name__": "guide"}
    saved = []
    before = temp_entries()
    try:
        for i, block in enumerate(blocks):
            name = re.match(r"# file: (\w+)\.py\n", block)
            if name:
                (tmp_path / f"{name.group(1)}.py").write_text(block)
                saved.append(name.group(1))
                continue
            exec(compile(block, f"{GUIDE}:block{i + 1}", "exec"), namespace)
    finally:
        remove_temp_entries_named_in(namespace, before)
        for module in saved:
            sys.modules.pop(module, None)
        algorithms.unregister("guide-momentum")
    assert saved == ["my_research"]
    assert namespace["accuracy"] > 0.85


README = GUIDE.parents[1] / "README.md"


def test_the_readme_tour_runs(spark):
    text = README.read_text()
    tour = re.search(r"## A tour.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "tour"}
    before = temp_entries()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(tour, f"{README}:tour", "exec"), namespace)
    finally:
        remove_temp_entries_named_in(namespace, before)
    assert namespace["restored"].count_params() == namespace["trained"].count_params()
    # Saved models and pipelines load without Keras's optimizer-variable warning.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
