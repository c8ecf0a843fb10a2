"""WFA caption uniqueness weights: properties on toy captions and on the real UCM-/Sydney-captions."""
import numpy as np
import pytest

from curation import captions


def test_exact_duplicates_weigh_least_and_weights_sum_to_one():
    caps = ["a dense residential area with many houses",
            "many buildings and green trees are in a dense residential area",
            "a dense residential area with many houses",
            "two straight roads cross near a parking lot"]
    w = captions.uniqueness_weights(caps)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == w[2] == w.min()
    assert w[3] > w[1] > w[0]  # sharing nothing with the others beats sharing a phrase
    folded, fw = captions.fold_duplicates(caps, w)
    assert folded == [caps[0], caps[1], caps[3]]
    np.testing.assert_allclose(fw, [w[0] + w[2], w[1], w[3]])


def test_degenerate_images():
    np.testing.assert_allclose(captions.uniqueness_weights(["the same sentence ."] * 5), np.full(5, 0.2))
    np.testing.assert_allclose(captions.uniqueness_weights(["x"]), [1.0])
    np.testing.assert_allclose(captions.uniqueness_weights(["alpha beta", "gamma delta", "epsilon zeta"]),
                               np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="image 1: caption 0 is empty"):
        captions.dataset_weights([["a b"], ["  ", "c d"]])


def test_numbered_loader_rejects_bad_lines(tmp_path):
    good = tmp_path / "caps.txt"
    good.write_text("1 a river .\n1 a river with trees .\n2 a port .\n")
    ids, caps = captions.load_numbered_captions(good)
    assert ids == ["1", "2"] and caps == [["a river .", "a river with trees ."], ["a port ."]]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a river .\nriver without number\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        captions.load_numbered_captions(bad)


def check_real(caps_per_image):
    weights = captions.dataset_weights(caps_per_image)
    for caps, w in zip(caps_per_image, weights):
        assert w.sum() == pytest.approx(1.0) and (w > 0).all()
        repeated = np.array([caps.count(c) > 1 for c in caps])
        if repeated.any():
            assert np.allclose(w[repeated], w.min())  # an exact copy is never weighted above anything else
    return weights


def test_real_ucm_captions(shared_data):
    names, caps = captions.load_karpathy_captions(shared_data / "captions" / "ucm_captions.json")
    assert len(caps) == 2100 and all(len(c) == 5 for c in caps)
    weights = check_real(caps[:700])
    with_copies = [w for c, w in zip(caps[:700], weights) if len(set(c)) < len(c)]
    assert with_copies and all(w.max() > w.min() for w in with_copies)
    _, test_caps = captions.load_karpathy_captions(shared_data / "captions" / "ucm_captions.json", split="test")
    assert 0 < len(test_caps) < 2100


def test_real_sydney_captions(shared_data):
    ids, caps = captions.load_numbered_captions(shared_data / "captions" / "sydney_captions.txt")
    assert len(ids) == 613
    check_real(caps[:200])
