"""`zdk lab`: algorithms through real shards on spawned numpy worker processes, without Spark.

Cells are small (1–2 workers, 1–3 epochs); each starts its own shards and workers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from test_plugin import installed_plugin  # noqa: F401  (the example plugin, found by its entry point)
from zdk import algorithms
from zdk.cli import main as zdk_main
from zdk.errors import ConfigError, WorkerFailed
from zdk.lab import LabSettings, report, run_cell, run_lab, spread_params
from zdk.lab.models import MODELS, get_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def children() -> set[int]:
    """Live (not zombie) child processes of this process, but multiprocessing's resource tracker
    (started once, on the first spawn, for the interpreter's lifetime)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if b"resource_tracker" not in fh.read():
                    found.add(int(entry))
    return found


@pytest.fixture
def no_orphans():
    before = children()
    yield
    assert children() - before == set(), "a worker or shard process outlived its cell"


# ---------------------------------------------------------------- settings and models (no processes)


@pytest.mark.parametrize("kwargs, field, says", [
    ({"window": 0}, "window", "`window` must be ≥ 1"),
    ({"workers": (2, 0)}, "workers", "`workers` must be a non-empty sequence of ints ≥ 1"),
    ({"workers": ()}, "workers", "`workers` must be a non-empty"),
    ({"shards": 0}, "shards", "`shards` must be ≥ 1. Received: shards=0"),
    ({"epochs": 0}, "epochs", "`epochs` must be ≥ 1. Received: epochs=0"),
    ({"lr": 0.0}, "lr", "`lr` must be > 0. Received: lr=0.0"),
    ({"seeds": (-1,)}, "seeds", "`seeds` must be"),
    ({"stragglers": 1.5}, "stragglers", r"`stragglers` must be in \[0, 1\]. Received: stragglers=1.5"),
    ({"slowdown": 0.5}, "slowdown", "`slowdown` must be ≥ 1. Received: slowdown=0.5"),
    ({"drop": 1.0}, "drop", r"`drop` must be in \[0, 1\)"),
    ({"drop": 0.5, "late": 0.6}, "late", "`late` must be in"),
    ({"model": "mnist"}, "model", "`model` must be one of"),
    ({"algorithms": ()}, "algorithms", "`algorithms` must be a non-empty"),
    ({"params": {"aeasgd": {"rho": 1.0}}}, "params", "`params` must be keyed by algorithms of this run"),
])
def test_settings_validation_names_the_field_and_value(kwargs, field, says):
    with pytest.raises(ConfigError, match=says) as info:
        LabSettings(**kwargs)
    assert info.value.field == field


def test_slow_workers_are_the_last_rounded_share():
    settings = LabSettings(stragglers=0.25, slowdown=4)
    assert settings.slow_workers(1) == () and settings.slow_workers(4) == (3,)
    assert settings.slow_workers(8) == (6, 7) and LabSettings(stragglers=1.0).slow_workers(2) == (0, 1)
    assert LabSettings(stragglers=0.5, slowdown=1).slow_workers(4) == ()


def test_shared_params_go_to_the_algorithms_that_have_them():
    spread = spread_params(["downpour", "adag"], {"eta": 0.5}, {"downpour": {"communication_window": 2}})
    assert spread == {"adag": {"eta": 0.5}, "downpour": {"communication_window": 2}}
    with pytest.raises(ConfigError, match=r"hyperparameters of at least one of \['downpour'\]. Received: \['eta'\]"):
        spread_params(["downpour"], {"eta": 0.5})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradient_matches_finite_differences(name):
    model = get_model(name)
    x, y, _, _ = model.data()
    x = x[:8].astype(np.float64)
    y = y[:8] if y.dtype.kind == "i" else y[:8].astype(np.float64)
    theta = model.init(3).astype(np.float64)
    theta += np.random.default_rng(0).normal(scale=0.05, size=theta.size)  # nonzero biases too
    grad = np.empty_like(theta)
    model.loss_and_grad(theta, x, y, grad)
    eps = 1e-6
    for i in np.random.default_rng(1).choice(theta.size, size=min(40, theta.size), replace=False):
        plus, minus = theta.copy(), theta.copy()
        plus[i] += eps
        minus[i] -= eps
        scratch = np.empty_like(theta)
        numeric = (model.loss_and_grad(plus, x, y, scratch) - model.loss_and_grad(minus, x, y, scratch)) / (2 * eps)
        assert numeric == pytest.approx(grad[i], rel=1e-4, abs=1e-7), f"coordinate {i}"


def test_model_evaluate_agrees_with_the_training_loss():
    for name in MODELS:
        model = get_model(name)
        x, y, _, _ = model.data()
        theta = model.init(0)
        loss, _ = model.evaluate(theta, x[:50], y[:50])
        assert loss == pytest.approx(model.loss_and_grad(theta, x[:50], y[:50], np.empty_like(theta)), rel=1e-4)


# ---------------------------------------------------------------- cells through real shards


def test_one_worker_is_exactly_reproducible(no_orphans):
    settings = LabSettings(algorithms=("adag",), model="digits", workers=(1,), epochs=2)
    first, second = (run_cell(settings, algorithm="adag", workers=1, seed=7) for _ in range(2))
    assert first.value == second.value and first.loss == second.loss
    assert [v for _, v in first.curves[0]] == [v for _, v in second.curves[0]]
    assert first.commits == second.commits == first.exchanges
    other = run_cell(settings, algorithm="adag", workers=1, seed=8)
    assert other.loss != first.loss, "the seed must matter"


def test_a_lossy_link_still_converges_and_applies_every_commit_once(no_orphans):
    settings = LabSettings(algorithms=("downpour",), model="lstsq", workers=(2,), window=8, epochs=2, lr=0.05,
                           drop=0.05, late=0.05, delay=0.02)
    cell = run_cell(settings, algorithm="downpour", workers=2, seed=0)
    print(f"lossy: {cell.dropped} dropped, {cell.delayed} delayed, {cell.resends} resends, mse {cell.value:.4f}")
    assert cell.dropped > 0 and cell.resends > 0
    assert cell.updates == (cell.exchanges, cell.exchanges), "a commit was lost or applied twice"
    assert cell.commits == cell.exchanges == 2 * -(-2 * 63 // 8)  # per worker: ⌈2 epochs × ⌈1000 rows / 16⌉ / λ⌉
    assert cell.value < 0.1 and not cell.diverged


def test_stragglers_take_longer_per_step(no_orphans):
    settings = LabSettings(algorithms=("downpour",), model="digits", workers=(2,), epochs=3, stragglers=0.5,
                           slowdown=4)
    cell = run_cell(settings, algorithm="downpour", workers=2, seed=0)
    fast, slow = cell.step_seconds
    assert cell.stragglers == (1,)
    assert slow > 2.0 * fast, cell.step_seconds


def test_a_plugin_runs_in_the_same_table_as_the_builtins(installed_plugin, no_orphans):  # noqa: F811
    settings = LabSettings(algorithms=("downpour", "capped-downpour"), model="lstsq", workers=(2,), epochs=1,
                           params={"capped-downpour": {"max_staleness": 1}})
    result = run_lab(settings)
    cols, rows = report.table(report.summarize(result))
    assert [r[0] for r in rows] == ["downpour", "capped-downpour"] and cols[2] == "mse"
    capped = result.cells[1]
    assert capped.params["max_staleness"] == 1 and capped.params["communication_window"] == 4
    assert capped.exchanges > 0 and capped.value < 1.0


def test_a_failing_worker_fails_the_cell_naming_it_and_leaves_no_process(tmp_path, no_orphans):
    plugin = tmp_path / "breaks_in_workers.py"
    plugin.write_text("import multiprocessing\n"
                      "if multiprocessing.parent_process() is not None:\n"
                      "    raise RuntimeError('this plugin breaks in worker processes')\n")
    settings = LabSettings(algorithms=("downpour",), model="lstsq", workers=(2,), epochs=1, plugins=(str(plugin),))
    try:
        with pytest.raises(WorkerFailed, match="lab worker [01] failed: RuntimeError: this plugin breaks"):
            run_cell(settings, algorithm="downpour", workers=2, seed=0)
    finally:
        sys.modules.pop("breaks_in_workers", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


def test_cli_runs_a_script_plugin_beside_a_builtin_and_writes_json_and_png(tmp_path, capsys, no_orphans):
    out_json, out_png = tmp_path / "lab" / "run.json", tmp_path / "lab" / "run.png"
    try:
        code = zdk_main(["lab", "--algorithms", "downpour", "momentum-downpour", "--workers", "2", "--epochs", "1",
                         "--model", "lstsq", "--plugin", str(EXAMPLES / "custom_algorithm.py"),
                         "--params", '{"server_momentum": 0.25}', "--params", 'downpour={"communication_window": 2}',
                         "--json", str(out_json), "--plot", str(out_png)])
    finally:
        algorithms.unregister("momentum-downpour")
        sys.modules.pop("custom_algorithm", None)
        if str(EXAMPLES) in sys.path:
            sys.path.remove(str(EXAMPLES))
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["algorithm", "workers", "mse", "loss", "τ", "mean", "τ", "max", "commits", "kB/commit",
                                 "wall", "s"]
    assert [line.split()[0] for line in lines[2:4]] == ["downpour", "momentum-downpour"]
    figures = json.loads(out_json.read_text())
    assert [s["algorithm"] for s in figures["summary"]] == ["downpour", "momentum-downpour"]
    downpour, momentum = figures["cells"]
    assert downpour["params"]["communication_window"] == 2 and momentum["params"]["server_momentum"] == 0.25
    assert all(len(curve) == 1 for cell in figures["cells"] for curve in cell["curves"])
    assert figures["settings"]["plugins"] == [str(EXAMPLES / "custom_algorithm.py")]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_a_bad_setting_naming_it(capsys):
    assert zdk_main(["lab", "--algorithms", "downpour", "--window", "-1", "--workers", "1"]) == 1
    assert "`window` must be ≥ 1" in capsys.readouterr().err
    assert zdk_main(["lab", "--algorithms", "nope", "--workers", "1"]) == 1
    assert "Could not interpret algorithm: 'nope'" in capsys.readouterr().err
