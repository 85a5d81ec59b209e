"""A task's resident set size: sampled on a thread from its start to its end, reported in the
worker's summary, and the thread gone when the task ends, however it ends."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from conftest import poll_until
from zdk.errors import ConfigError
from zdk.runtime import rss
from zdk.runtime.rss import RssSampler, resident_bytes

pytestmark = pytest.mark.skipif(resident_bytes() is None, reason="no /proc/self/statm on this system")

MB = 2**20


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zdk-rss"]


def test_the_peak_grows_with_an_array_allocated_while_sampling_and_the_thread_stops():
    sampler = RssSampler(interval=0.01).start()
    assert sampler.running and sampler.start_bytes is not None
    block = np.ones(50 * MB // 8)  # written, so its pages are resident
    sampler.stop()
    del block
    assert not sampler.running and not sampler_threads()
    assert sampler.peak_bytes - sampler.start_bytes >= 40 * MB, (sampler.start_bytes, sampler.peak_bytes)


def test_the_thread_keeps_a_peak_that_is_gone_before_stop(monkeypatch):
    monkeypatch.setattr(rss, "reset_high_water", lambda: False)  # the samples alone
    with RssSampler(interval=0.01) as sampler:
        assert not sampler.exact
        block = np.ones(50 * MB // 8)
        poll_until(lambda: sampler.peak_bytes - sampler.start_bytes >= 40 * MB, timeout=5,
                   what="the sampling thread to see the array")
        del block
        after = resident_bytes()
        assert after is not None and sampler.peak_bytes - after >= 40 * MB  # freed, yet the peak kept it
    assert not sampler_threads()


def test_the_kernels_high_water_mark_catches_a_peak_between_two_samples():
    if not rss.reset_high_water():
        pytest.skip("this kernel does not let a process reset its VmHWM")
    with RssSampler(interval=60) as sampler:  # the thread takes no sample in this test
        assert sampler.exact
        block = np.ones(50 * MB // 8)
        del block
        assert sampler.peak_bytes - sampler.start_bytes < 10 * MB  # nothing sampled since the start
    assert sampler.peak_bytes - sampler.start_bytes >= 40 * MB


def test_the_thread_stops_when_the_block_raises_and_a_sampler_samples_one_span():
    with pytest.raises(RuntimeError, match="a task failed"):
        with RssSampler() as sampler:
            raise RuntimeError("a task failed")
    assert not sampler.running and not sampler_threads()
    sampler.stop()  # a second stop is harmless
    with pytest.raises(RuntimeError, match="make a new one"):
        sampler.start()
    with pytest.raises(ConfigError, match="interval"):
        RssSampler(interval=0)


def batches(rows: int = 256, fail_at: int | None = None):
    rng = np.random.default_rng(0)
    for k in range(rows // 64):
        if k == fail_at:
            raise RuntimeError("the partition could not be read")
        x = rng.normal(size=(64, 4)).astype(np.float32)
        yield pa.RecordBatch.from_pydict({"features": pa.array(list(x), pa.list_(pa.float32())), "label": x.sum(1)})


def config_json() -> str:
    keras = pytest.importorskip("keras")
    from zdk.runtime.models import make_spec
    from zdk.runtime.worker import WorkerConfig

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    spec = make_spec(model, optimizer="sgd", loss="mse", metrics=[])
    return WorkerConfig(spec=spec.to_json(), algorithm="sequential", params={}, endpoints=(), features=("features",),
                        labels=("label",), batch_size=16, num_epoch=2).to_json()


def test_a_task_reports_its_rss_in_its_summary_and_stops_sampling_at_its_end():
    from zdk.runtime.worker import HISTORY_SCHEMA, train_partition

    (out,) = list(train_partition(config_json(), batches()))
    assert "rss_start_bytes long" in HISTORY_SCHEMA and "rss_peak_bytes long" in HISTORY_SCHEMA
    records = out.to_pylist()
    summary = records[-1]
    assert summary["kind"] == "summary" and summary["rows"] == 256
    assert 0 < summary["rss_start_bytes"] <= summary["rss_peak_bytes"]
    assert all(r["rss_start_bytes"] is None and r["rss_peak_bytes"] is None for r in records[:-1])  # steps: none
    assert not sampler_threads()


def test_a_failed_task_stops_sampling():
    from zdk.runtime.worker import train_partition

    with pytest.raises(RuntimeError, match="could not be read"):
        list(train_partition(config_json(), batches(fail_at=2)))
    assert not sampler_threads()
