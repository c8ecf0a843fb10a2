"""Grain pipeline. Epochs: coverage, order determinism, weights, shards, exact resume. Inference passes:
order, padding, per-process rows, read_batch vs record reads, errors. The host-sized worker count."""
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from oceansar.data import pipeline
from oceansar.data.pipeline import (epoch_dataset, epoch_order, inference_dataset, inference_rows,
                                    steps_per_epoch)
from oceansar.data.selection import Selection
from oceansar.errors import ConfigError
from oceansar.spec import RunSpec


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
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    rest = _ids(it)
    fresh = iter(epoch_dataset(_IndexSource(32), Selection.full(32), **kwargs))
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(2, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(fresh)))
    assert restored["data"] is fresh
    np.testing.assert_array_equal(_ids(fresh), rest)


class _ColumnarIndexSource(_IndexSource):
    """The same records, also readable as columns (as the in-memory cache); counts its calls."""

    def __init__(self, n, **kwargs):
        super().__init__(n, **kwargs)
        self.calls = []

    def read_batch(self, indices):
        indices = np.asarray(indices, np.int64)
        self.calls.append(indices.tolist())
        return {"image": np.stack([super(_ColumnarIndexSource, self).__getitem__(int(i))["image"]
                                   for i in indices]),
                "sample_id": indices.copy(), "label": (indices % 3).astype(np.int32)}

    def __getitem__(self, i):
        raise AssertionError("a columnar source is read through read_batch")


def _global_batches(source, indices, batch_size, shard_count, **kwargs):
    """Each global batch, re-assembled from the per-process batches of every shard."""
    shards = [list(inference_dataset(source, indices, batch_size=batch_size, shard_index=p,
                                     shard_count=shard_count, **kwargs)) for p in range(shard_count)]
    assert len({len(s) for s in shards}) == 1
    return [{k: np.concatenate([s[b][k] for s in shards]) for k in shards[0][b]}
            for b in range(len(shards[0]))]


@pytest.mark.parametrize("shard_count", [2, 4])
def test_inference_rows_disjoint_covering_in_order(shard_count):
    n, batch = 37, 8
    parts = [inference_rows(n, batch_size=batch, shard_index=p, shard_count=shard_count)
             for p in range(shard_count)]
    for positions, valid in parts:
        assert positions.shape == valid.shape == (5, batch // shard_count)
    # Global batch k is shard 0's rows, then shard 1's, ...: together every position once, in order.
    positions = np.concatenate([p for p, _ in parts], axis=1).reshape(-1)
    valid = np.concatenate([v for _, v in parts], axis=1).reshape(-1)
    np.testing.assert_array_equal(positions[valid], np.arange(n))
    np.testing.assert_array_equal(valid, np.arange(40) < n)
    np.testing.assert_array_equal(positions[~valid], n - 1)  # padding repeats the last position
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by shard_count=4"):
        inference_rows(n, batch_size=6, shard_count=4)
    with pytest.raises(ValueError, match="shard_index"):
        inference_rows(n, batch_size=8, shard_index=4, shard_count=4)


def test_inference_padding_repeats_the_last_record():
    src = _IndexSource(30)
    indices = np.array([29, 4, 4, 17, 8, 2, 11])  # one batch of 4, then 3 real rows and 1 padding
    batches = list(inference_dataset(src, indices, batch_size=4))
    assert len(batches) == 2
    b = batches[1]
    assert set(b) == {"image", "sample_id", "label", "valid"}
    np.testing.assert_array_equal(b["sample_id"], [8, 2, 11, 11])
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], [8, 2, 11, 11])
    np.testing.assert_array_equal(b["valid"], [True, True, True, False])
    assert b["image"].dtype == np.uint8 and b["sample_id"].dtype == np.int64
    assert b["valid"].dtype == bool and batches[0]["valid"].all()


@pytest.mark.parametrize("shard_count", [2, 4])
@pytest.mark.parametrize("columnar", [False, True])
def test_inference_shards_reassemble_the_single_process_pass(shard_count, columnar):
    src = (_ColumnarIndexSource if columnar else _IndexSource)(50)
    indices = np.random.default_rng(0).choice(50, 45, replace=True)
    single = list(inference_dataset(src, indices, batch_size=8))
    merged = _global_batches(src, indices, 8, shard_count)
    assert len(single) == len(merged) == 6
    for one, many in zip(single, merged):
        assert one.keys() == many.keys()
        for key in one:
            np.testing.assert_array_equal(many[key], one[key])
    padded = np.concatenate([indices, np.repeat(indices[-1:], 3)])
    np.testing.assert_array_equal(np.concatenate([b["sample_id"] for b in single]), padded)
    np.testing.assert_array_equal(np.concatenate([b["valid"] for b in single]), np.arange(48) < 45)


def test_inference_read_batch_and_record_paths_agree():
    indices = np.array([20, 3, 3, 7, 0, 11, 19, 5, 2, 14, 6])
    columnar = _ColumnarIndexSource(21)
    by_batch = list(inference_dataset(columnar, indices, batch_size=4, shard_index=1, shard_count=2))
    for threads in (0, 4):
        by_record = list(inference_dataset(_IndexSource(21), indices, batch_size=4, shard_index=1,
                                           shard_count=2, read_threads=threads))
        assert len(by_record) == len(by_batch) == 3
        for r, b in zip(by_record, by_batch):
            assert r.keys() == b.keys()
            for key in r:
                np.testing.assert_array_equal(b[key], r[key])
                assert b[key].dtype == r[key].dtype
    # One call for the first record (the layout), then one per process batch: rows 2-3 of each.
    assert columnar.calls == [[20], [3, 7], [19, 5], [6, 6]]


def test_inference_sample_id_defaults_to_the_source_index():
    class NoIds(_IndexSource):
        def __getitem__(self, i):
            record = super().__getitem__(i)
            del record["sample_id"]
            record["name"] = f"img_{i}"  # not numeric: left out
            record["hs"] = np.float64(i) / 4
            return record

    b = next(iter(inference_dataset(NoIds(10), np.array([9, 2, 5]), batch_size=4)))
    assert set(b) == {"image", "sample_id", "label", "hs", "valid"}
    np.testing.assert_array_equal(b["sample_id"], [9, 2, 5, 5])
    assert b["sample_id"].dtype == np.int64 and b["hs"].dtype == np.float64
    np.testing.assert_array_equal(b["hs"], [2.25, 0.5, 1.25, 1.25])


def test_inference_float_images_keep_their_dtype():
    b = next(iter(inference_dataset(_IndexSource(8, dtype=np.float32), np.arange(8), batch_size=4)))
    assert b["image"].dtype == np.float32  # as the source gives it: features match the old loader


def test_inference_errors_name_the_record():
    class Ragged(_IndexSource):
        def __getitem__(self, i):
            record = super().__getitem__(i)
            if i == 5:
                record["image"] = record["image"][:3]
            if i == 9:
                del record["label"]
            if i == 11:
                record["image"] = record["image"].astype(np.float16)
            return record

    with pytest.raises(ValueError, match=r"source record 5 has image \(3, 4, 1\) uint8 but record 0 has"):
        list(inference_dataset(Ragged(12), np.arange(8), batch_size=4))
    with pytest.raises(ValueError, match=r"source record 9 has scalar fields \['sample_id'\] but record 8"):
        list(inference_dataset(Ragged(12), np.arange(8, 11), batch_size=2))
    with pytest.raises(ValueError, match="source record 11 has image .* float16 but record 10 has"):
        list(inference_dataset(Ragged(12), np.array([10, 11]), batch_size=2))
    with pytest.raises(ValueError, match="source record 5 has image"):  # read-ahead threads too
        list(inference_dataset(Ragged(12), np.arange(8), batch_size=4, read_threads=4))

    class NoImage(_IndexSource):
        def __getitem__(self, i):
            return {"label": np.int32(i)}

    with pytest.raises(ValueError, match="source record 3 has no 'image' field"):
        inference_dataset(NoImage(5), np.array([3, 1]), batch_size=2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, len\(source\)=5\)"):
        inference_dataset(_IndexSource(5), np.array([0, 5]), batch_size=2)
    with pytest.raises(ValueError, match="no indices"):
        inference_dataset(_IndexSource(5), np.array([], np.int64), batch_size=2)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        inference_dataset(_IndexSource(5), np.arange(5), batch_size=6, shard_count=4)

    class RaggedColumns(_ColumnarIndexSource):
        def read_batch(self, indices):
            batch = super().read_batch(indices)
            if 6 in batch["sample_id"]:
                batch["image"] = batch["image"][:, :2]
            return batch

    with pytest.raises(ValueError, match="source batch from record 4 has images"):
        list(inference_dataset(RaggedColumns(12), np.arange(12), batch_size=4))


def test_auto_worker_count_follows_the_cores_this_process_may_use(monkeypatch):
    for cores, workers in ((1, 0), (2, 1), (16, 15), (128, pipeline.MAX_AUTO_WORKERS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert pipeline.host_worker_count(pipeline.AUTO_WORKERS) == workers
    assert pipeline.host_worker_count(0) == 0 and pipeline.host_worker_count(5) == 5
    c = default.get_config("smoke")
    c.data.worker_count = -2
    with pytest.raises(ConfigError, match="config.data.worker_count: must be >= 0, or -1 for one per usable core"):
        RunSpec.from_config(c)
