"""extract_features on a tiny fake source: values, fields, padding, sharding over 8 devices, errors."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from oceansar.evals.features import extract_features


class FakeSource:
    """Random-access source of n tiny uint8 images with a label, wind speed, Hs and a string field."""

    def __init__(self, n=21, with_sample_id=False):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 4, 4, 2), dtype=np.uint8)
        self.label = rng.integers(0, 3, n).astype(np.int32)
        self.wind_speed = rng.uniform(0, 20, n).astype(np.float32)
        self.hs = rng.uniform(0, 8, n).astype(np.float32)
        self.with_sample_id = with_sample_id

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        record = {"image": self.images[i], "label": self.label[i], "wind_speed": self.wind_speed[i],
                  "hs": self.hs[i], "path": f"img_{i}.png"}
        if self.with_sample_id:
            record["sample_id"] = np.int64(1000 + i)
        return record


@jax.jit
def mean_over_pixels(images):
    return images.astype(np.float32).mean(axis=(1, 2))


def _expected_features(source, indices):
    return source.images[indices].astype(np.float32).mean(axis=(1, 2))


@pytest.mark.parametrize("use_mesh", [False, True])
def test_extract_features_values_fields_and_padding(use_mesh):
    source = FakeSource()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)) if use_mesh else None
    shardings, batches = [], []

    def embed(images):
        shardings.append(getattr(images, "sharding", None))
        batches.append(np.asarray(images))
        if not use_mesh:
            assert isinstance(images, np.ndarray)  # no mesh: the host batch as it is (curate relies on it)
        return mean_over_pixels(images)

    # 21 records in batches of 8: the last batch carries 5 real rows and 3 padded ones.
    out = extract_features(embed, source, batch_size=8, mesh=mesh, progress=use_mesh)
    assert len(shardings) == 3
    assert len(batches) == 3 and all(b.shape == (8, 4, 4, 2) and b.dtype == np.uint8 for b in batches)
    # The padding repeats the last real image (never zeros), and is dropped from the output.
    np.testing.assert_array_equal(batches[2], source.images[[16, 17, 18, 19, 20, 20, 20, 20]])
    assert out["features"].shape == (21, 2)
    if use_mesh:
        assert all(s == NamedSharding(mesh, P("data")) for s in shardings)
    assert set(out) == {"features", "label", "wind_speed", "hs", "sample_id"}
    np.testing.assert_allclose(out["features"], _expected_features(source, np.arange(21)), rtol=1e-6)
    assert out["features"].dtype == np.float32
    np.testing.assert_array_equal(out["label"], source.label)
    np.testing.assert_array_equal(out["wind_speed"], source.wind_speed)
    np.testing.assert_array_equal(out["hs"], source.hs)
    np.testing.assert_array_equal(out["sample_id"], np.arange(21))


def test_extract_features_indices_and_record_sample_ids():
    source = FakeSource(with_sample_id=True)
    indices = np.array([20, 3, 3, 7, 0])
    out = extract_features(mean_over_pixels, source, batch_size=3, indices=indices)
    np.testing.assert_allclose(out["features"], _expected_features(source, indices), rtol=1e-6)
    np.testing.assert_array_equal(out["sample_id"], 1000 + indices)
    np.testing.assert_array_equal(out["label"], source.label[indices])


def test_extract_features_errors():
    source = FakeSource()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        extract_features(mean_over_pixels, source, batch_size=6, mesh=mesh)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, len\(source\)=21\)"):
        extract_features(mean_over_pixels, source, batch_size=4, indices=np.array([0, 21]))
    with pytest.raises(ValueError, match="must return"):
        extract_features(jax.jit(lambda x: x.astype(np.float32).mean(axis=(1, 2, 3))), source, batch_size=4)

    class Ragged(FakeSource):
        def __getitem__(self, i):
            record = super().__getitem__(i)
            if i == 5:
                record["image"] = record["image"][:3]
            if i == 9:
                del record["hs"]
            return record

    with pytest.raises(ValueError, match="source record 5 has image"):
        extract_features(mean_over_pixels, Ragged(), batch_size=8)
    with pytest.raises(ValueError, match="source record 9 has scalar fields"):
        extract_features(mean_over_pixels, Ragged(), batch_size=4, indices=np.arange(8, 12))


class ColumnarSource(FakeSource):
    """The same records, also readable a batch at a time as columns (as the in-memory cache)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reads = []

    def read_batch(self, indices):
        self.reads.append(np.asarray(indices).tolist())
        return {"image": self.images[indices], "label": self.label[indices],
                "wind_speed": self.wind_speed[indices], "hs": self.hs[indices]}

    def __getitem__(self, i):
        raise AssertionError("a columnar source is read through read_batch")


def test_columnar_reads_give_the_record_path_result():
    indices = np.array([20, 3, 3, 7, 0, 11, 19, 5, 2, 14, 6])
    by_record = extract_features(mean_over_pixels, FakeSource(), batch_size=4, indices=indices)
    columnar = ColumnarSource()
    by_batch = extract_features(mean_over_pixels, columnar, batch_size=4, indices=indices)
    # One read of the first record (the layout every batch is checked against), then one call per
    # batch: 11 rows in batches of 4, the last padded with its last index.
    assert columnar.reads == [[20], [20, 3, 3, 7], [0, 11, 19, 5], [2, 14, 6, 6]]
    assert by_batch.keys() == by_record.keys()
    for key in by_record:
        np.testing.assert_array_equal(by_batch[key], by_record[key])
        assert by_batch[key].dtype == by_record[key].dtype


def test_columnar_sample_ids_and_record_sample_ids_agree():
    class ColumnarWithIds(ColumnarSource):
        def read_batch(self, indices):
            return {**super().read_batch(indices), "sample_id": 1000 + np.asarray(indices, np.int32)}

    indices = np.array([4, 1, 1, 9, 20])
    by_record = extract_features(mean_over_pixels, FakeSource(with_sample_id=True), batch_size=2,
                                 indices=indices)
    by_batch = extract_features(mean_over_pixels, ColumnarWithIds(), batch_size=2, indices=indices)
    for out in (by_record, by_batch):
        np.testing.assert_array_equal(out["sample_id"], 1000 + indices)
        assert out["sample_id"].dtype == np.int64


def test_columnar_errors_name_the_batch():
    class RaggedColumns(ColumnarSource):
        def read_batch(self, indices):
            batch = super().read_batch(indices)
            if 12 in np.asarray(indices):
                del batch["hs"]
            return batch

    with pytest.raises(ValueError, match="source batch from record 12 has scalar fields"):
        extract_features(mean_over_pixels, RaggedColumns(), batch_size=4, indices=np.arange(21))

