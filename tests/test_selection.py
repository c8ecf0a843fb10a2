"""The Selection and its file format, owned by `oceansar.data.selection` (written by curate, read by the static
policy)."""
import json

import numpy as np
import pytest

from oceansar.data.selection import Selection


def test_save_load_round_trip(tmp_path):
    sel = Selection(np.array([3, 1, 2]), np.array([1.0, 2.0, 0.5]))
    sel.save(tmp_path / "sel", summary={"method": "hkmeans", "num_embeddings": 10, "kept": np.int64(3)})
    back = Selection.load(tmp_path / "sel", num_samples=10)
    np.testing.assert_array_equal(back.indices, [3, 1, 2])
    np.testing.assert_array_equal(back.weights, np.float32([1.0, 2.0, 0.5]))
    assert json.loads((tmp_path / "sel" / "summary.json").read_text())["kept"] == 3
    # Unit weights are not written: the file of a plain subset is its indices alone.
    Selection.subset([4, 5]).save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "weights.npy").exists()
    np.testing.assert_array_equal(Selection.load(tmp_path / "plain").weights, [1.0, 1.0])


def test_load_refuses_another_pool_and_missing_files(tmp_path):
    Selection.subset([0, 9]).save(tmp_path / "sel", summary={"num_embeddings": 10})
    with pytest.raises(ValueError, match="curated from 10 embeddings but the pretraining source has 12"):
        Selection.load(tmp_path / "sel", num_samples=12)
    Selection.subset([0, 9]).save(tmp_path / "nosummary")
    with pytest.raises(ValueError, match="index 9 but the source has only 5"):
        Selection.load(tmp_path / "nosummary", num_samples=5)
    with pytest.raises(FileNotFoundError, match="not a selection written by --mode=curate"):
        Selection.load(tmp_path / "empty")


def test_selection_checks_its_arrays():
    with pytest.raises(ValueError, match="indices has 2 entries but Selection.weights has 1"):
        Selection(np.array([1, 2]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        Selection(np.array([1]), np.array([np.nan]))
