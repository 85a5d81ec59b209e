"""The example plugin found through its entry point, by name, in-process and in shard processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from zdk import algorithms
from zdk.ps.client import PSClient

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """What `pip install examples/plugin` leaves behind: an importable package and a dist-info
    with the entry point, on a path of its own."""
    dist = tmp_path / "zdk_staleness_cap-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zdk-staleness-cap\nVersion: 0.1.0\n")
    config = (PLUGIN_SRC / "setup.cfg").read_text()
    entry = config.split("zdk.algorithms =")[1].strip().splitlines()[0].strip()
    (dist / "entry_points.txt").write_text(f"[zdk.algorithms]\n{entry}\n")
    paths = [str(tmp_path), str(PLUGIN_SRC)]
    for p in paths:
        monkeypatch.syspath_prepend(p)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    algorithms.unregister("capped-downpour")
    algorithms.reload_entry_points()
    yield
    algorithms.unregister("capped-downpour")
    sys.modules.pop("zdk_staleness_cap", None)


def test_plugin_is_discovered_by_name(installed_plugin):
    assert "capped-downpour" in algorithms.available()
    algo = algorithms.get("capped-downpour")
    assert algo.make_params(max_staleness=2).max_staleness == 2
    with pytest.raises(Exception, match="`max_staleness` must be an int ≥ 0. Received: max_staleness=-1"):
        algo.make_params(max_staleness=-1)


def test_plugin_runs_in_shard_processes_and_drops_stale_commits(installed_plugin, shards):
    group = shards(num_shards=2, total_size=6, algorithm="capped-downpour", params={"max_staleness": 1},
                   initial=np.zeros(6, np.float32))
    with PSClient(group.endpoints, worker_id=1) as fast, PSClient(group.endpoints, worker_id=2) as slow:
        fast.hello(), slow.hello()
        fast.pull(), slow.pull()
        one = np.ones(6, np.float32)
        assert fast.commit(one).applied  # τ = 0
        assert fast.commit(one).applied  # τ = 1 (fast did not pull in between)
        receipt = slow.commit(100 * one)  # τ = 2 > 1: dropped
        assert not receipt.applied and receipt.staleness == 2 and receipt.info["dropped"] == 1.0
        np.testing.assert_array_equal(fast.pull(), 2 * one)
        stats = fast.stats()
    assert [s["dropped"] for s in stats] == [1, 1] and [s["updates"] for s in stats] == [2, 2]
