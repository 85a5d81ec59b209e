"""The research workbench behind ``zdk lab``: any registered algorithm through the real sharded PS,
without Spark, on worker processes that train a numpy model.

    from zdk.lab import LabSettings, run_lab, report

    result = run_lab(LabSettings(algorithms=("downpour", "adag"), workers=(1, 4, 16), epochs=10))
    report.plot(result, "lab.png"); report.write_json(result, "lab.json")

Modules: :mod:`~zdk.lab.models` (the numpy models), :mod:`~zdk.lab.settings` (what to sweep),
:mod:`~zdk.lab.worker` (a worker process), :mod:`~zdk.lab.run` (a cell, the sweep),
:mod:`~zdk.lab.report` (table, JSON, PNG), :mod:`~zdk.lab.proxy` (the lossy link).
"""

from zdk.lab import report
from zdk.lab.run import CellResult, LabResult, run_cell, run_lab
from zdk.lab.settings import LabSettings, spread_params

__all__ = ["CellResult", "LabResult", "LabSettings", "report", "run_cell", "run_lab", "spread_params"]
