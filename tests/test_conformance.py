"""The conformance kit: every built-in passes, the CLI reports, and broken plugins fail naming their invariant."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zdk import algorithms
from zdk.algorithms import APPLIED, Algorithm, Params, accumulated_delta, reset_to_center
from zdk.cli import main
from zdk.ps.conformance import CHECKPOINT, INVARIANTS, NO_WRITES, SHARDING, ConformanceError, check

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Fewer generated runs than the default (30), to keep this file quick; `zdk algorithms check` uses the default.
FEW = 12
BUILTINS = ["downpour", "agn", "adag", "adag_worker", "dynsgd", "aeasgd", "eamsgd", "averaging", "ensemble", "sequential"]


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_passes(name):
    began = time.perf_counter()
    report = check(name, max_examples=FEW)
    assert [o.invariant for o in report.outcomes] == list(INVARIANTS)
    if algorithms.get(name).uses_ps:
        assert {o.status for o in report.outcomes} == {"passed"}
    else:
        assert {o.status for o in report.outcomes} == {"skipped"}
        assert all("uses_ps=False" in o.detail for o in report.outcomes)
    assert time.perf_counter() - began < 10  # about 1 s on an idle machine


def test_the_check_is_reproducible():
    messages = set()
    for _ in range(2):
        with pytest.raises(ConformanceError) as caught:
            check(SCRIBBLER, max_examples=FEW)
        messages.add(str(caught.value))
    assert len(messages) == 1


# ---------------------------------------------------------------- deliberately broken plugins

def first_element_update(shard, worker, delta, params):
    """Scales by the slice's first element: what it does depends on where the shard's cut falls."""
    shard.center += delta * (np.float32(1) + np.abs(shard.center[0]))
    return APPLIED


CUT_DEPENDENT = Algorithm(name="broken-cut", params=Params, server_update=first_element_update,
                          worker_delta=accumulated_delta, worker_reset=reset_to_center)


def counting_update(shard, worker, delta, params):
    """Damps by how many commits this worker made, counted in WorkerSlot.state, which no checkpoint keeps."""
    count = worker.state.get("commits", 0)
    worker.state["commits"] = count + 1
    shard.center += delta / np.float32(1 + count)
    return APPLIED


FORGETFUL = Algorithm(name="broken-checkpoint", params=Params, server_update=counting_update,
                      worker_delta=accumulated_delta, worker_reset=reset_to_center)


def scribbling_delta(win, params):
    """Computes Δ in the pulled center's own buffer."""
    np.subtract(win.local, win.pulled, out=win.pulled)
    return win.pulled.copy()


SCRIBBLER = Algorithm(name="broken-writes", params=Params, additive=True, worker_delta=scribbling_delta,
                      worker_reset=reset_to_center)


@pytest.mark.parametrize("broken, invariant, says", [
    (CUT_DEPENDENT, SHARDING, "3 shards"),
    (FORGETFUL, CHECKPOINT, "restored"),
    (SCRIBBLER, NO_WRITES, "`worker_delta` wrote into `pulled`"),
])
def test_a_broken_plugin_fails_naming_its_invariant(broken, invariant, says):
    with pytest.raises(ConformanceError) as caught:
        check(broken, max_examples=FEW)
    error = caught.value
    assert error.invariant == invariant and isinstance(error, AssertionError)
    message = str(error)
    assert f"breaks {invariant!r}" in message and says in message, message
    assert "Minimal failing input: size=" in message and "3 shards: [0, " in message, message
    assert [o.invariant for o in error.report.failures] == [invariant], error.report
    assert broken.name not in algorithms.available()
    assert not any("conformance" in name for name in algorithms.available())


def test_a_registered_plugin_is_checked_by_name(capsys):
    algorithms.register(SCRIBBLER)
    try:
        assert main(["algorithms", "check", "broken-writes", "--examples", str(FEW)]) == 1
    finally:
        algorithms.unregister("broken-writes")
    out, err = capsys.readouterr()
    assert "no writes to arrays it does not own  failed" in out and "1 failed" in out
    assert "zdk: algorithm 'broken-writes' breaks 'no writes to arrays it does not own'" in err


def test_params_reach_the_algorithm():
    with pytest.raises(Exception, match="eta"):
        check("adag", params={"eta": -1.0})
    assert check("adag", params={"eta": 0.5}, max_examples=5).failures == ()


# ---------------------------------------------------------------- the CLI

def test_cli_check_prints_the_table_and_exits_0(capsys):
    assert main(["algorithms", "check", "downpour"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(INVARIANTS)]
    assert [row.split("  ")[0] for row in rows] == list(INVARIANTS) and all(" passed" in row for row in rows)
    assert "downpour: 6 passed, 0 skipped, 0 failed" in out


def test_cli_check_of_an_unknown_name_is_a_clear_error(capsys):
    assert main(["algorithms", "check", "no-such-algorithm"]) == 1
    err = capsys.readouterr().err
    assert "Could not interpret algorithm: 'no-such-algorithm'; available:" in err and "downpour" in err


def test_cli_check_says_why_invariants_were_skipped(capsys):
    assert main(["algorithms", "check", "sequential"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(INVARIANTS)]
    assert len(rows) == len(INVARIANTS) and all(" skipped " in row and "uses_ps=False" in row for row in rows)


def test_cli_still_lists_algorithms(capsys):
    assert main(["algorithms"]) == 0
    assert "downpour" in capsys.readouterr().out


# ---------------------------------------------------------------- the example plugins

@pytest.fixture
def example_module():
    """Imports an example file as a module, and unregisters what it registered."""
    loaded: list[str] = []

    def load(path: Path, registers: str):
        algorithms.unregister(registers)
        loaded.append(registers)
        spec = importlib.util.spec_from_file_location(f"conformance_example_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while being built
        modules.append(spec.name)
        spec.loader.exec_module(module)
        return module

    modules: list[str] = []
    yield load
    for name in loaded:
        algorithms.unregister(name)
    for module_name in modules:
        sys.modules.pop(module_name, None)


def test_the_custom_algorithm_example_conforms(example_module):
    module = example_module(EXAMPLES / "custom_algorithm.py", "momentum-downpour")
    assert check("momentum-downpour", params={"server_momentum": 0.9}, max_examples=FEW).algorithm == "momentum-downpour"
    assert isinstance(module.MomentumDownpour, Algorithm)


def test_the_installable_example_plugin_conforms(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "plugin"))
    try:
        from zdk_staleness_cap import CappedDownpour
        check(CappedDownpour, params={"max_staleness": 1}, max_examples=FEW)
    finally:
        sys.modules.pop("zdk_staleness_cap", None)
    assert not any("conformance" in name for name in algorithms.available())
