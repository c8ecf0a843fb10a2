"""Caption tokenizer: round trip to the normalised text, fixed rows (BOS, EOS kept under truncation, PAD 0),
save/load and pickle giving identical ids, deterministic training, named errors."""
import pickle

import numpy as np
import pytest
from tokenizers import Tokenizer

from oceansar.data.tokenizer import CaptionTokenizer, normalize_caption, train_tokenizer

CAPTIONS = [
    "There is a piece of farmland .",
    "Many buildings and green trees are in a dense residential area .",
    "Two tennis courts are arranged in line on the lawn with some trees beside .",
    "A sar wave mode image of ocean swell, wind about 7 m/s from the north-west.",
    "Lots of boats docked neatly at the harbor .",
] * 4


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CAPTIONS, vocab_size=400)


def test_normalize_caption():
    assert normalize_caption("  Two\tTennis  COURTS\n .") == "two tennis courts ."
    assert normalize_caption("ｍ/ｓ") == "m/s"  # NFKC folds full-width forms


def test_round_trip_is_the_normalised_text(tok):
    texts = CAPTIONS[:5] + ["  UNSEEN   Words: über-glacier 12.5 m/s?!", "", "x"]
    ids = tok.encode(texts, context_length=64)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), 64)
    assert tok.decode(ids) == [normalize_caption(t) for t in texts]
    assert tok.decode(ids[0]) == [normalize_caption(texts[0])]


def test_rows_have_bos_eos_and_zero_padding(tok):
    assert tok.pad_id == 0 and len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    ids = tok.encode(["there is a piece of farmland .", ""], context_length=32)
    n = int(tok.num_tokens(ids)[0])
    assert ids[0, 0] == tok.bos_id and ids[0, n - 1] == tok.eos_id and (ids[0, n:] == 0).all()
    assert (ids[0, 1:n - 1] != 0).all() and n > 2
    np.testing.assert_array_equal(ids[1, :3], [tok.bos_id, tok.eos_id, 0])
    assert tok.num_tokens(ids).tolist() == [n, 2]
    assert tok.vocab_size == tok.tokenizer.get_vocab_size() and ids.max() < tok.vocab_size


def test_truncation_keeps_eos(tok):
    long = " ".join(["many buildings and green trees"] * 10)
    full = tok.encode([long], context_length=128)[0]
    cut = tok.encode([long], context_length=6)[0]
    assert (full != 0).sum() > 6
    np.testing.assert_array_equal(cut, np.r_[full[:5], tok.eos_id])  # BOS + 4 tokens + EOS
    assert normalize_caption(long).startswith(tok.decode(cut)[0])
    np.testing.assert_array_equal(tok.encode(["a"], context_length=2)[0], [tok.bos_id, tok.eos_id])


def test_save_load_and_pickle_give_identical_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = CaptionTokenizer.load(path)
    texts = CAPTIONS[:5] + ["an unseen caption about icebergs"]
    np.testing.assert_array_equal(loaded.encode(texts, 40), tok.encode(texts, 40))
    assert loaded == tok and (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone.encode(texts, 40), tok.encode(texts, 40))
    # A release's JSON alone (plain `tokenizers`) normalises and adds the same BOS/EOS.
    plain = Tokenizer.from_file(str(path)).encode("  There IS a piece of farmland .").ids
    row = tok.encode(["there is a piece of farmland ."], 40)[0]
    assert plain == row[row != 0].tolist()


def test_training_is_deterministic():
    a = train_tokenizer(CAPTIONS, vocab_size=400)
    b = train_tokenizer(list(CAPTIONS), vocab_size=400)
    assert a.to_json() == b.to_json()


def test_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        train_tokenizer(CAPTIONS, vocab_size=100)
    with pytest.raises(ValueError, match="non-empty caption"):
        train_tokenizer(["  ", ""], vocab_size=300)
    with pytest.raises(ValueError, match="context_length must be >= 2"):
        tok.encode(["a"], context_length=1)
    with pytest.raises(TypeError, match="list of captions"):
        tok.encode("a caption", context_length=8)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        CaptionTokenizer.load(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="special token"):
        CaptionTokenizer(Tokenizer.from_str(tok.to_json().replace("<bos>", "<start>")))
