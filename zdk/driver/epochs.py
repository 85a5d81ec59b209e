"""When an epoch of an asynchronous run ends, and what its training figures are.

Workers train at their own pace. Each one, at the end of each of its epochs, reports the
epoch's figures to the shards (``epoch``, its ``samples``, and the loss and metrics of its steps
averaged with their rows as weights, which for the loss and mean metrics is the epoch's value as
``fit`` reports it). For the driver, epoch e has ended once
every worker has reported it; its training figures are the workers' figures averaged with
their samples as weights: f_e = Σ_k n_k f_k / Σ_k n_k.

A worker whose task is retried trains its epochs again and reports them again; the first
report of an epoch counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class EpochFigures:
    """One finished epoch, as the driver sees it.

    Args:
        epoch: the epoch, from 0.
        samples: samples trained in it, over every worker.
        logs: the sample-weighted mean of each figure over the workers (``loss``, metrics).
    """

    epoch: int
    samples: int
    logs: Mapping[str, float] = field(default_factory=dict)


def combine(epoch: int, summaries: Sequence[Mapping[str, float]]) -> EpochFigures:
    """The figures of ``epoch`` from every worker's summary of it, weighted by samples."""
    samples = [max(0.0, float(s.get("samples", 0.0))) for s in summaries]
    total = sum(samples)
    names = [k for k in dict.fromkeys(k for s in summaries for k in s) if k not in ("epoch", "samples")]
    logs: dict[str, float] = {}
    for name in names:
        pairs = [(float(s[name]), n) for s, n in zip(summaries, samples) if name in s and n > 0]
        weight = sum(n for _, n in pairs)
        if weight:
            logs[name] = sum(v * n for v, n in pairs) / weight
        elif any(name in s for s in summaries):
            logs[name] = math.nan
    return EpochFigures(epoch=epoch, samples=int(total), logs=logs)


class EpochTracker:
    """Collects the workers' epoch reports from the shards' ``stats`` and says which epochs ended.

    Args:
        num_workers: the run's workers (tasks), numbered 0..num_workers-1.
        first_epoch: the first epoch the run trains (later than 0 when it resumed).
    """

    def __init__(self, *, num_workers: int, first_epoch: int = 0) -> None:
        self.num_workers = num_workers
        #: The first epoch that has not ended yet.
        self.next_epoch = first_epoch
        self._reports: dict[int, dict[int, Mapping[str, float]]] = {}

    def add(self, stats: Sequence[Mapping[str, Any]]) -> list[EpochFigures]:
        """Takes every shard's ``stats`` reply (asked with ``epochs_from=next_epoch``) and returns
        the epochs that ended since the last call, in order."""
        for shard in stats:
            for worker, entry in shard.get("workers", {}).items():
                wid = int(worker)
                if wid >= self.num_workers:
                    continue
                for epoch, summary in entry.get("epochs", {}).items():
                    if int(epoch) >= self.next_epoch:
                        self._reports.setdefault(int(epoch), {}).setdefault(wid, summary)
        ended = []
        while len(self._reports.get(self.next_epoch, {})) == self.num_workers:
            reports = self._reports.pop(self.next_epoch)
            ended.append(combine(self.next_epoch, [reports[w] for w in sorted(reports)]))
            self.next_epoch += 1
        return ended
