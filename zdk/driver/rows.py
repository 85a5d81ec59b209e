"""How a DataFrame's rows are split among the training tasks: cast for training, one partition
per task, each partition shuffled on request."""

from __future__ import annotations

from typing import Any, Sequence

from zdk.driver.columns import as_float32


def split_rows(dataframe: Any, columns: Sequence[str], *, tasks: int, seed: int, shuffle: bool) -> Any:
    """``columns`` cast for training, in ``tasks`` partitions, each shuffled with ``shuffle``.

    Round-robin partitioning spreads every stretch of the input evenly over the tasks, and a
    local sort by a random key shuffles each task's rows: no global sort, whose range
    partitioning costs a sampling job of its own.
    """
    from pyspark.sql import functions as F

    names = dict.fromkeys(columns)
    data = dataframe.select(*[as_float32(dataframe, name).alias(name) for name in names])
    data = data.repartition(tasks)
    return data.sortWithinPartitions(F.rand(seed)) if shuffle else data
