"""A job's progress for the API (``zdk.service.progress``): live snapshots, loss series, the final summary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from zdk.service.progress import (MAX_POINTS, LiveProgress, clean_epochs, epochs_from_history, final_progress,
                                  merge_epochs, series_from_history)


def snapshot(elapsed: float, **workers: tuple[int, float | None]) -> dict:
    return {"elapsed": elapsed, "steps": sum(s for s, _ in workers.values()),
            "workers": {w[1:]: {"step": step, "loss": loss} for w, (step, loss) in workers.items()}}


def test_live_progress_keeps_the_latest_snapshot_and_a_point_per_new_step():
    live = LiveProgress()
    assert live.view() == {"series": {}}
    live.add(snapshot(0.5, w0=(0, None), w1=(1, 2.0)))
    live.add(snapshot(1.004, w0=(2, 1.5), w1=(1, 2.0)))  # worker 1 took no step: no new point
    view = live.view()
    assert view["elapsed"] == 1.004 and view["steps"] == 3
    assert view["series"] == {"0": [[1.0, 2, 1.5]], "1": [[0.5, 1, 2.0]]}
    view["series"]["0"].append("changed")
    assert live.view()["series"]["0"] == [[1.0, 2, 1.5]]  # a view is a copy


def test_live_series_are_thinned_to_the_point_budget_keeping_the_first_point():
    live = LiveProgress()
    for step in range(1, 3 * MAX_POINTS):
        live.add(snapshot(step / 10, w0=(step, 1.0 / step)))
    points = live.view()["series"]["0"]
    assert len(points) <= MAX_POINTS and points[0][1] == 1
    assert [p[1] for p in points] == sorted(p[1] for p in points)


def test_series_from_history_is_relative_to_the_first_step_and_keeps_the_last_point():
    assert series_from_history([]) == {}
    history = [{"worker": w, "step": s, "timestamp": 100.0 + s + w / 10, "loss": 1.0 / s}
               for s in range(1, 2 * MAX_POINTS + 2) for w in (0, 1)]
    series = series_from_history(history)
    assert set(series) == {"0", "1"}
    assert series["0"][0] == [0.0, 1, 1.0]
    for points in series.values():
        assert len(points) <= MAX_POINTS + 1 and points[-1][1] == 2 * MAX_POINTS + 1


def test_final_progress_summarises_the_whole_history():
    history = [{"worker": 0, "step": 1, "timestamp": 0.0, "loss": 3.0},
               {"worker": 1, "step": 1, "timestamp": 0.1, "loss": 2.0},
               {"worker": 0, "step": 2, "timestamp": 0.2, "loss": 1.0}]
    final = final_progress(history, num_epoch=3, batch_size=32, training_time=2.0, timings={"total": 2.5},
                           members=1)
    assert final["steps"] == final["total"] == 3 and final["epoch"] == 2
    assert final["loss"] == pytest.approx((1.0 + 2.0) / 2)  # the mean of each worker's latest loss
    assert final["samples_per_s"] == pytest.approx(32 * 3 / 2.0)
    assert final["timings"] == {"total": 2.5} and final["members"] == 1 and set(final["series"]) == {"0", "1"}
    empty = final_progress([], num_epoch=1, batch_size=32, training_time=0.0, timings={}, members=1)
    assert empty["loss"] is None and empty["samples_per_s"] == 0.0


def test_epoch_figures_come_from_keras_history_as_json_safe_rows():
    # A keras.callbacks.History's two attributes, as the epoch loop left them after a resume at epoch 3.
    history = SimpleNamespace(epoch=[3, 4], history={"loss": [1.5, 1.0], "val_loss": [float("nan"), 0.5]})
    assert epochs_from_history(history) == [{"epoch": 3, "loss": 1.5, "val_loss": None},
                                            {"epoch": 4, "loss": 1.0, "val_loss": 0.5}]
    assert clean_epochs([{"epoch": 2.0, "loss": float("inf"), "note": "x"}]) == [{"epoch": 2, "loss": None}]


def test_a_resumed_run_shows_the_earlier_runs_epochs_before_its_own():
    earlier = [{"epoch": e, "loss": 3.0 - e} for e in range(4)]
    later = [{"epoch": 2, "loss": 0.9}, {"epoch": 3, "loss": 0.8}]  # epochs 2 and 3 trained again
    assert merge_epochs(earlier, later) == earlier[:2] + later
    assert merge_epochs(earlier, []) == earlier and merge_epochs([], later) == later
    live = LiveProgress(earlier)
    live.add({**snapshot(1.0, w0=(5, 1.0)), "epoch_logs": [{"epoch": 3.0, "loss": 0.8, "val_loss": 0.7}],
              "val_loss": 0.7})
    view = live.view()
    assert view["epoch_logs"] == earlier[:3] + [{"epoch": 3, "loss": 0.8, "val_loss": 0.7}]
    assert view["val_loss"] == 0.7
    assert "epoch_logs" not in LiveProgress().view()  # an unwatched run has none


def test_final_progress_carries_a_watched_jobs_epochs_and_the_last_epoch_trained():
    history = [{"worker": 0, "epoch": e, "step": e + 1, "timestamp": float(e), "loss": 1.0} for e in range(3)]
    epochs = [{"epoch": 0, "loss": 1.0, "val_loss": 1.2}, {"epoch": 1, "loss": 0.9, "val_loss": 1.1}]
    final = final_progress(history, num_epoch=50, batch_size=32, training_time=1.0, timings={}, members=1,
                           epochs=epochs)
    assert final["epoch_logs"] == epochs and final["val_loss"] == 1.1
    assert final["epoch"] == 2  # stopped early by a callback: the last epoch a worker trained in, not 49
    assert "epoch_logs" not in final_progress(history, num_epoch=3, batch_size=32, training_time=1.0, timings={},
                                              members=1)
