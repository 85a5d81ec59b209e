import numpy as np
import pytest

from zdk.errors import ConfigError
from zdk.ps.layout import FlatLayout, ShardPlan


def test_flatten_and_views_round_trip_in_order(rng):
    arrays = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32),
              np.float32(rng.normal(size=(2, 1, 2)))]
    layout = FlatLayout.of(arrays)
    flat = layout.flatten(arrays)
    assert flat.dtype == np.float32 and flat.size == 12 + 4 + 4
    np.testing.assert_array_equal(flat[:12], arrays[0].ravel())
    np.testing.assert_array_equal(flat[12:16], arrays[1])
    for view, original in zip(layout.views(flat), arrays):
        np.testing.assert_array_equal(view, original)


def test_views_share_memory_with_the_flat_vector():
    layout = FlatLayout(shapes=((2, 2), (3,)))
    flat = layout.empty()
    views = layout.views(flat)
    views[1][:] = 7.0
    assert flat[4:].tolist() == [7.0, 7.0, 7.0]
    assert all(np.shares_memory(v, flat) for v in views)


def test_flatten_into_preallocated_buffer_does_not_allocate():
    layout = FlatLayout(shapes=((2,), (1,)))
    out = layout.empty()
    result = layout.flatten([np.array([1.0, 2.0]), np.array([3.0])], out=out)
    assert result is out and out.tolist() == [1.0, 2.0, 3.0]


def test_flatten_rejects_wrong_shapes_naming_them():
    layout = FlatLayout(shapes=((2,),))
    with pytest.raises(ConfigError, match=r"shape must be \(2,\)"):
        layout.flatten([np.zeros(3)])
    with pytest.raises(ConfigError, match="must hold 1 arrays"):
        layout.flatten([np.zeros(2), np.zeros(2)])


def test_views_reject_f_ordered_or_wrong_dtype():
    layout = FlatLayout(shapes=((4,),))
    with pytest.raises(ConfigError, match="C-contiguous float32"):
        layout.views(np.zeros(4, dtype=np.float64))


@pytest.mark.parametrize("total,shards", [(10, 1), (10, 3), (10, 10), (1_000_003, 7)])
def test_shard_plan_tiles_the_vector_with_balanced_contiguous_ranges(total, shards):
    plan = ShardPlan(total, shards)
    ranges = plan.ranges
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_plan_slices_are_views():
    flat = np.arange(10, dtype=np.float32)
    parts = ShardPlan(10, 3).slices(flat)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(np.shares_memory(p, flat) for p in parts)


@pytest.mark.parametrize("total,shards,field", [(0, 1, "total_size"), (5, 0, "num_shards"), (3, 4, "num_shards")])
def test_shard_plan_validates_with_field_and_value(total, shards, field):
    with pytest.raises(ConfigError, match=f"`{field}` must be"):
        ShardPlan(total, shards)
