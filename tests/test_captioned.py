"""Captioned sources: exact-duplicate folding with hand-checked counts, weights and tokens, the UCM and Karpathy
layouts, shared tokenizers, named errors for missing and corrupt files, batches through the Grain pipeline, the real
UCM-captions, and the simulator's generated captions (redundancy knob, true wind, determinism)."""
import json
import math
import pickle

import numpy as np
import pytest
from PIL import Image

from curation.captions import uniqueness_weights
from oceansar.data import synthetic
from oceansar.data.captioned import (CAPTION_FIELDS, CaptionedImageSource, CaptionListing, captioned_splits,
                                     read_karpathy_listing, read_ucm_listing, ucm_captioned_splits)
from oceansar.data.decode import CorruptImageError, resize_square
from oceansar.data.pipeline import epoch_dataset
from oceansar.data.selection import Selection
from oceansar.data.synthetic.captions import (CaptionedSyntheticWV, SyntheticCaptioner, caption_facts, compass_from,
                                              wv_captions)
from oceansar.data.tokenizer import normalize_caption
from oceansar.errors import DataError, DataNotFoundError

SAME = ["There is a piece of farmland ."] * 5
MIXED = ["A dense residential area .", "a  dense   RESIDENTIAL area .", "two tennis courts near trees .",
         "two tennis courts near trees .", "a river crosses the scene ."]
VARIED = ["many boats at a harbor .", "some boats docked at a harbor .", "a harbor with boats .",
          "boats are in the harbor .", "lots of boats in a harbor ."]


def _rgb(seed, size=20):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _ucm_layout(root):
    """Three train images (two classes) and one val image, UCM-captions style."""
    entries = []
    for k, (split, cls, caps) in enumerate([("train", "farm", SAME), ("train", "urban", MIXED),
                                            ("train", "urban", VARIED), ("val", "farm", VARIED[::-1])]):
        rel = f"{split}/{cls}/{cls}{k:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(k)).save(root / rel)
        entries.append({"image": rel, "class": cls, "ucm_id": f"{k + 1}.tif", "captions": caps})
    (root / "captions.json").write_text(json.dumps({"split": "train+val", "images": entries}))
    return root


@pytest.fixture
def ucm(tmp_path):
    return ucm_captioned_splits(_ucm_layout(tmp_path), image_size=16, vocab_size=300, context_length=24)


def test_identical_captions_fold_to_one_row(ucm):
    train, _ = ucm
    r = train[0]
    assert r["caption_valid"].tolist() == [True, False, False, False, False]
    assert r["caption_count"].tolist() == [5, 0, 0, 0, 0]
    np.testing.assert_array_equal(r["caption_weights"], [1.0, 0, 0, 0, 0])
    assert (r["caption_ids"][1:] == 0).all()
    assert train.tokenizer.decode(r["caption_ids"][:1]) == [normalize_caption(SAME[0])]
    # Hand count: every original caption's BOS + its BPE tokens + EOS, folded or not.
    body = len(train.tokenizer.tokenizer.encode(normalize_caption(SAME[0]), add_special_tokens=False).ids)
    assert r["caption_tokens"] == 5 * (body + 2) and r["caption_tokens"].dtype == np.int32


def test_whitespace_and_case_copies_fold_with_summed_weights(ucm):
    train, _ = ucm
    r = train[1]
    assert r["caption_valid"].tolist() == [True, True, True, False, False]
    assert r["caption_count"].tolist() == [2, 2, 1, 0, 0]
    w = uniqueness_weights([normalize_caption(c) for c in MIXED])
    np.testing.assert_allclose(r["caption_weights"], [w[0] + w[1], w[2] + w[3], w[4], 0, 0], rtol=1e-6)
    assert train.tokenizer.decode(r["caption_ids"][:3]) == [normalize_caption(c) for c in MIXED[::2]]
    bodies = [len(train.tokenizer.tokenizer.encode(normalize_caption(c), add_special_tokens=False).ids) + 2
              for c in MIXED]
    assert r["caption_tokens"] == sum(bodies)
    assert train.captions(1) == [c.strip() for c in MIXED]


def test_record_fields_shapes_and_sums(ucm):
    train, val = ucm
    assert len(train) == 3 and len(val) == 1 and val.tokenizer is train.tokenizer
    assert train.class_names == ["farm", "urban"] and train.labels().tolist() == [0, 1, 1]
    for source in (train, val):
        for i in range(len(source)):
            r = source[i]
            assert r["image"].shape == (16, 16, 3) and r["image"].dtype == np.uint8
            assert r["sample_id"] == i and r["sample_id"].dtype == np.int64 and r["label"].dtype == np.int32
            assert r["caption_ids"].shape == (5, 24) and r["caption_ids"].dtype == np.int32
            assert r["caption_valid"].dtype == bool and r["caption_count"].dtype == np.int32
            assert r["caption_weights"].dtype == np.float32
            assert r["caption_count"].sum() == 5 and r["caption_weights"].sum() == pytest.approx(1.0, abs=1e-6)
            assert (r["caption_weights"][~r["caption_valid"]] == 0).all()
            assert (r["caption_count"][~r["caption_valid"]] == 0).all()
            assert (r["caption_weights"][r["caption_valid"]] > 0).all()
    assert val[0]["caption_valid"].all()  # five different sentences
    assert train.redundancy()["captions"] == 15 and train.redundancy()["distinct"] == 1 + 3 + 5
    assert train.redundancy()["tokens"] > train.redundancy()["distinct_tokens"]


def test_images_resized_and_converted_like_the_folder_source(tmp_path):
    root = _ucm_layout(tmp_path)
    listing = read_ucm_listing(root, "train")
    gray = CaptionedImageSource.with_new_tokenizer(listing, vocab_size=300, image_size=8, channels=1)
    assert gray.image_shape == (8, 8, 1)
    with Image.open(listing.files[1]) as im:
        expected = resize_square(np.asarray(im.convert("L"))[..., None], 8)
    np.testing.assert_array_equal(gray[1]["image"], expected)
    native = CaptionedImageSource(listing, gray.tokenizer, image_size=None)
    np.testing.assert_array_equal(native[2]["image"], _rgb(2))
    clone = pickle.loads(pickle.dumps(native))
    for key in ("image",) + CAPTION_FIELDS:
        np.testing.assert_array_equal(clone[1][key], native[1][key])


def test_karpathy_layout(tmp_path):
    (tmp_path / "imgs").mkdir()
    images = []
    for k, caps in enumerate([SAME, MIXED, VARIED]):
        Image.fromarray(_rgb(10 + k)).save(tmp_path / "imgs" / f"{k}.jpg", quality=95)
        images.append({"filename": f"{k}.jpg", "imgid": k, "split": "test" if k == 2 else "train",
                       "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})
    path = tmp_path / "dataset_rsicd.json"
    path.write_text(json.dumps({"images": images, "dataset": "rsicd"}))
    listings = [read_karpathy_listing(path, tmp_path / "imgs", s) for s in ("train", "test")]
    train, test = captioned_splits(listings, vocab_size=300, image_size=12, context_length=16)
    assert len(train) == 2 and len(test) == 1 and train.class_names is None and train.labels() is None
    r = train[0]
    assert "label" not in r and r["image"].shape == (12, 12, 3)
    assert r["caption_count"].tolist() == [5, 0, 0, 0, 0] and r["caption_weights"][0] == 1.0
    assert test[0]["caption_valid"].all() and test.tokenizer is train.tokenizer
    short = CaptionedImageSource(listings[0], train.tokenizer, image_size=12, context_length=4)
    assert short[0]["caption_tokens"] == 5 * 4  # every caption truncated to BOS + 2 tokens + EOS
    assert (short[0]["caption_ids"][0, -1] == train.tokenizer.eos_id)


def test_missing_and_corrupt_files_are_named(tmp_path):
    root = _ucm_layout(tmp_path)
    listing = read_ucm_listing(root, "train")
    tok = CaptionedImageSource.with_new_tokenizer(listing, vocab_size=300, image_size=8).tokenizer
    (root / "train/urban/urban02.png").write_bytes(b"not a png at all")
    source = CaptionedImageSource(listing, tok, image_size=8)
    with pytest.raises(CorruptImageError, match="urban02.png"):
        source[2]
    (root / "train/urban/urban01.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"urban01\.png does not exist \(1 of 3"):
        CaptionedImageSource(listing, tok, image_size=8)
    with pytest.raises(DataNotFoundError, match="no image of split 'test'"):
        read_ucm_listing(root, "test")
    with pytest.raises(DataError, match=r"image 0 .*farm00.png.*more than max_captions=4"):
        CaptionedImageSource(CaptionListing(listing.files[:1], listing.captions[:1], None, None, "caps.json"), tok,
                             image_size=8, max_captions=4)


def test_batches_through_the_pipeline(ucm):
    train, _ = ucm
    batch = next(iter(epoch_dataset(train, Selection.full(len(train)), seed=0, epoch=0, batch_size=2)))
    assert batch["caption_ids"].shape == (2, 5, 24) and batch["caption_valid"].shape == (2, 5)
    assert batch["caption_tokens"].shape == (2,) and batch["image"].shape == (2, 16, 16, 3)
    np.testing.assert_allclose(batch["caption_weights"].sum(1), 1.0, rtol=1e-6)


def test_real_ucm_captions(shared_data):
    root = shared_data / "ucm_captions"
    if not (root / "captions.json").is_file():
        pytest.skip(f"UCM-captions images not found at {root}")
    train, val = ucm_captioned_splits(root, image_size=32, vocab_size=1000)
    assert (len(train), len(val)) == (1680, 210) and len(train.class_names) == 21
    assert val.tokenizer is train.tokenizer and val.class_names == train.class_names
    cols = train.caption_columns()
    distinct = cols["caption_valid"].sum(1)
    assert (distinct < 5).sum() >= 10  # UCM-captions repeats sentences verbatim for many images
    assert (cols["caption_count"].sum(1) == 5).all()
    np.testing.assert_allclose(cols["caption_weights"].sum(1), 1.0, rtol=1e-5)
    eos = train.tokenizer.eos_id
    assert ((cols["caption_ids"] == eos).sum(-1) == cols["caption_valid"]).all()  # no caption lost its EOS
    r = val[0]
    assert r["image"].shape == (32, 32, 3) and 0 <= r["label"] < 21
    stats = train.redundancy()
    assert stats["captions"] == 5 * 1680 and stats["distinct_tokens"] < stats["tokens"]


# ---- the simulator's generated captions ----

@pytest.fixture(scope="module")
def wv():
    return synthetic.SyntheticWV(num_samples=120, image_size=32, seed=7, burst_length=1)


@pytest.mark.parametrize("repeat_fraction, distinct", [(0.0, 5), (0.25, 4), (0.5, 3), (1.0, 1)])
def test_redundancy_knob_gives_the_distinct_count(wv, repeat_fraction, distinct):
    captioner = SyntheticCaptioner(num_captions=5, repeat_fraction=repeat_fraction, paraphrase_fraction=0.5, seed=7)
    for i, caps in enumerate(wv_captions(wv, np.arange(60), captioner)):
        assert len(caps) == 5 and len(set(caps)) == distinct == captioner.num_distinct(i)
        assert all(c == normalize_caption(c) for c in caps)


def test_fractional_knob_is_right_on_average(wv):
    captioner = SyntheticCaptioner(num_captions=5, repeat_fraction=0.3, seed=1)
    counts = [len(set(c)) for c in wv_captions(wv, np.arange(120), captioner)]
    assert set(counts) == {3, 4} and np.mean(counts) == pytest.approx(5 - 0.3 * 4, abs=0.15)


def test_captions_state_the_true_wind_and_are_deterministic(wv):
    captioner = SyntheticCaptioner(repeat_fraction=0.0, seed=7)
    idx = np.arange(0, 120, 7)
    caps = wv_captions(wv, idx, captioner)
    truth = wv.targets(idx)
    for c, w, label in zip(caps, truth["wind_speed"], truth["label"]):
        assert any(f" {math.floor(w + 0.5)} m/s" in s for s in c), (w, c)
        assert any(p in " ".join(c) for p in synthetic.captions.PHENOMENA[label])
    again = wv_captions(synthetic.SyntheticWV(num_samples=120, image_size=32, seed=7, burst_length=1), idx,
                        SyntheticCaptioner(repeat_fraction=0.0, seed=7))
    assert again == caps
    assert wv_captions(wv, idx, SyntheticCaptioner(repeat_fraction=0.0, seed=8)) != caps


def test_facts_conventions():
    assert compass_from(0.0) == "east" and compass_from(math.pi / 2) == "south"
    assert compass_from(math.pi) == "west" and compass_from(-3 * math.pi / 4) == "north-west"
    facts = caption_facts(0, 7.4, 2.46, 0.0, 243.0)
    assert (facts["w"], facts["hs"], facts["sea"], facts["beaufort"], facts["wl"]) == \
        ("7", "2.5", "moderate", "moderate breeze", "240")
    assert "hs" not in caption_facts(synthetic.SI, 5.0, 0.4, 0.0, 200.0)  # no waves to speak of in sea ice


def test_captioned_simulator_records(wv):
    redundant = CaptionedSyntheticWV.with_new_tokenizer(
        wv, vocab_size=400, fit_images=60, captioner=SyntheticCaptioner(repeat_fraction=1.0, seed=7))
    r = redundant[3]
    assert r["image"].shape == (32, 32, 1) and r["sample_id"] == 3 and "wind_speed" in r
    assert r["caption_count"].tolist() == [5, 0, 0, 0, 0] and r["caption_weights"].tolist() == [1, 0, 0, 0, 0]
    assert r["caption_ids"].shape == (5, 64)
    assert r["caption_ids"][0, -1] == 0  # the default context length truncates no generated caption
    varied = CaptionedSyntheticWV(wv, redundant.tokenizer, captioner=SyntheticCaptioner(repeat_fraction=0.5, seed=7))
    f = varied.caption_record(5)
    assert f["caption_valid"].sum() == 3 and f["caption_count"].sum() == 5
    assert f["caption_weights"].sum() == pytest.approx(1.0, abs=1e-6)
    assert sorted(varied.tokenizer.decode(f["caption_ids"][f["caption_valid"]])) == sorted(set(varied.captions(5)))
    clone = pickle.loads(pickle.dumps(varied))
    np.testing.assert_array_equal(clone[5]["caption_ids"], varied[5]["caption_ids"])
