"""Grain epoch pipeline: coverage, order determinism, weights, shards, and exact resume."""
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from oceansar.data.pipeline import (epoch_dataset, epoch_order, iterator_checkpoint_args,
                                    steps_per_epoch)
from oceansar.data.selection import Selection


class _IndexSource:
    """Tiny source whose image encodes its index (picklable for worker processes)."""

    def __init__(self, n, dtype=np.uint8):
        self.n, self.dtype = n, dtype
        self.image_shape = (4, 4, 1)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full(self.image_shape, i % 251, self.dtype),
                "sample_id": np.int64(i), "label": np.int32(i % 3)}


def _ids(ds):
    return np.concatenate([b["sample_id"] for b in ds])


def test_every_selected_index_once_and_records():
    src = _IndexSource(100)
    indices = np.arange(0, 96, 3)  # 32 rows
    sel = Selection.subset(indices, weights=indices / 1000.0)
    batches = list(epoch_dataset(src, sel, seed=1, epoch=0, batch_size=8))
    assert len(batches) == steps_per_epoch(32, 8) == 4
    ids = _ids(batches)
    assert sorted(ids.tolist()) == indices.tolist()
    b = batches[0]
    assert b["image"].shape == (8, 4, 4, 1) and b["image"].dtype == np.uint8
    assert b["sample_id"].dtype == np.int64 and b["weight"].dtype == np.float32
    np.testing.assert_allclose(b["weight"], b["sample_id"] / 1000.0, rtol=1e-6)
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["sample_id"] % 251)
    np.testing.assert_array_equal(b["label"], b["sample_id"] % 3)


def test_repeated_indices_keep_their_row_weight():
    src = _IndexSource(10)
    sel = Selection.subset([2, 2, 5, 7], weights=[0.5, 0.25, 1.0, 2.0])
    b = next(iter(epoch_dataset(src, sel, seed=0, epoch=0, batch_size=4)))
    pairs = sorted(zip(b["sample_id"].tolist(), b["weight"].tolist()))
    assert pairs == [(2, 0.25), (2, 0.5), (5, 1.0), (7, 2.0)]


def test_order_is_a_function_of_seed_and_epoch():
    src, sel = _IndexSource(64), Selection.full(64)
    order = lambda seed, epoch: _ids(epoch_dataset(src, sel, seed=seed, epoch=epoch, batch_size=8))
    np.testing.assert_array_equal(order(3, 1), order(3, 1))
    np.testing.assert_array_equal(order(3, 1), epoch_order(64, seed=3, epoch=1))
    assert not np.array_equal(order(3, 1), order(3, 2))
    assert not np.array_equal(order(3, 1), order(4, 1))


def test_truncation_and_too_small_selection():
    src = _IndexSource(50)
    ids = _ids(epoch_dataset(src, Selection.full(50), seed=0, epoch=0, batch_size=4,
                             shard_index=1, shard_count=3))
    assert ids.size == steps_per_epoch(50, 4, 3) * 4 == 16
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_dataset(src, Selection.full(11), seed=0, epoch=0, batch_size=4, shard_count=3)
    with pytest.raises(ValueError, match="only 50 samples"):
        epoch_dataset(src, Selection.full(60), seed=0, epoch=0, batch_size=4)


def test_shards_disjoint_covering_and_global_batches_match():
    src, sel = _IndexSource(70), Selection.full(70)
    shards = [list(epoch_dataset(src, sel, seed=5, epoch=2, batch_size=2, shard_index=p,
                                 shard_count=4)) for p in range(4)]
    assert len({len(s) for s in shards}) == 1
    per_shard = [set(_ids(s).tolist()) for s in shards]
    assert sum(len(s) for s in per_shard) == len(set.union(*per_shard)) == 64
    single = list(epoch_dataset(src, sel, seed=5, epoch=2, batch_size=8))
    for k, batch in enumerate(single):
        np.testing.assert_array_equal(
            batch["sample_id"], np.concatenate([s[k]["sample_id"] for s in shards]))


def test_float_images_ship_as_float16():
    src = _IndexSource(8, dtype=np.float32)
    b = next(iter(epoch_dataset(src, Selection.full(8), seed=0, epoch=0, batch_size=4)))
    assert b["image"].dtype == np.float16
    with pytest.raises(TypeError, match="uint8 or float16"):
        next(iter(epoch_dataset(_IndexSource(8, np.uint16), Selection.full(8), seed=0, epoch=0,
                                batch_size=4)))


def _resume_matches(worker_count):
    """Resumes after 3 batches on fresh objects; returns the whole epoch's sample_ids."""
    kwargs = dict(seed=7, epoch=3, batch_size=4, worker_count=worker_count)
    it = iter(epoch_dataset(_IndexSource(40), Selection.full(40), **kwargs))
    head = [next(it)["sample_id"] for _ in range(3)]
    state = it.get_state()
    rest = _ids(it)
    it.close()
    # Fresh source, selection, dataset and iterator, as after a restart.
    fresh = iter(epoch_dataset(_IndexSource(40), Selection.full(40), **kwargs))
    fresh.set_state(state)
    np.testing.assert_array_equal(_ids(fresh), rest)
    fresh.close()
    assert rest.size == 40 - 12
    return np.concatenate(head + [rest])


def test_resume_exact_without_workers():
    _resume_matches(0)


def test_resume_exact_with_one_worker_and_same_batches():
    # One worker on four-pixel images: the cost is two ~1-3 s process starts. Batching happens
    # in the worker, and the worker path yields exactly the in-process epoch.
    np.testing.assert_array_equal(_resume_matches(1), _resume_matches(0))


def test_grain_checkpoint_helper():
    ds = epoch_dataset(_IndexSource(12), Selection.full(12), seed=0, epoch=1, batch_size=3)
    grain.experimental.assert_equal_output_after_checkpoint(ds)


def test_orbax_roundtrip_of_iterator_state(tmp_path):
    kwargs = dict(seed=11, epoch=4, batch_size=4)
    it = iter(epoch_dataset(_IndexSource(32), Selection.full(32), **kwargs))
    next(it), next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(2, args=ocp.args.Composite(data=iterator_checkpoint_args(it)))
        mngr.wait_until_finished()
    rest = _ids(it)
    fresh = iter(epoch_dataset(_IndexSource(32), Selection.full(32), **kwargs))
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(2, args=ocp.args.Composite(
            data=iterator_checkpoint_args(fresh, restore=True)))
    assert restored["data"] is fresh
    np.testing.assert_array_equal(_ids(fresh), rest)
