"""The scaling benchmark's plots: tables read back from RESULTS.md, one PNG per axis."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))

import scaling_plots  # noqa: E402

MARKDOWN = """
## Scaling
### Shard memory by algorithm
text

| algorithm | workers | (peak − empty) / slice |
|---|---|---|
| adag | 2 | 6.01 |
| adag | 8 | 6.17 (was 12.11) |

more text

| algorithm | workers | with admission: (peak − empty) / slice |
|---|---|---|
| aeasgd | 2 | 4.02 |
### Next
| x |
|---|
| 1 |
"""


def test_number_reads_the_first_number_of_a_cell():
    assert scaling_plots.number("6.17 (was 12.11)") == 6.17
    assert scaling_plots.number("1 M") == 1.0
    assert scaling_plots.number(3) == 3.0
    assert scaling_plots.number("–") is None


def test_tables_reads_every_table_of_a_section_and_stops_at_the_next_heading():
    found = scaling_plots.tables(MARKDOWN, "### Shard memory")
    assert [len(t) for t in found] == [2, 1]
    assert found[0][1] == {"algorithm": "adag", "workers": "8", "(peak − empty) / slice": "6.17 (was 12.11)"}
    assert scaling_plots.column(found[1], "with admission", "(peak") == "with admission: (peak − empty) / slice"
    with pytest.raises(KeyError, match="no section"):
        scaling_plots.tables(MARKDOWN, "### Missing")
    with pytest.raises(KeyError, match="no column"):
        scaling_plots.column(found[0], "nothing like it")


def test_every_axis_of_results_md_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    results = os.path.join(HERE, "..", "benchmarks", "RESULTS.md")
    written = scaling_plots.from_results(results, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(name for _, name in scaling_plots.SECTIONS.values())
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
