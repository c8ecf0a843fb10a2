"""Embedding files round-trip; bad files give errors naming the file and row; plots are written."""

import numpy as np
import pytest

from curation import io


def test_embeddings_round_trip(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    io.save_embeddings(tmp_path, x, np.arange(10) + 100)
    emb, ids = io.load_embeddings(tmp_path)
    assert isinstance(emb, np.memmap) and emb.dtype == np.float16
    np.testing.assert_allclose(emb, x, atol=1e-2)
    np.testing.assert_array_equal(ids, np.arange(10) + 100)


def test_bad_embedding_files(tmp_path):
    x = np.ones((5, 3), np.float16)
    x[3, 1] = np.nan
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "sample_ids.npy", np.arange(5))
    with pytest.raises(ValueError, match=r"X\.npy: row 3"):
        io.load_embeddings(tmp_path)
    np.save(tmp_path / "sample_ids.npy", np.arange(4))
    with pytest.raises(ValueError, match=r"sample_ids\.npy: 4 sample ids"):
        io.load_embeddings(tmp_path / "X.npy")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        io.load_embeddings(tmp_path / "missing_dir")


def test_plots(tmp_path):
    p = io.plot_cluster_sizes(np.array([100, 50, 3, 0]), np.array([10, 10, 3]), tmp_path / "sizes.png")
    assert p.stat().st_size > 0
    imgs = np.random.default_rng(0).random((6, 8, 8))
    q = io.plot_kept_removed(imgs, np.array([1, 0, 1, 0, 1, 1], bool), tmp_path / "grid.png", max_per_row=3)
    assert q.stat().st_size > 0
