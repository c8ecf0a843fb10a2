"""The caption tokenizer: a byte-level BPE trained on a dataset's training captions, saved as one JSON file.

Here live `normalize_caption` (the one definition of when two captions are "the same string": NFKC, lowercase,
whitespace runs collapsed to one space, stripped), `train_tokenizer`, and `CaptionTokenizer`, which turns captions
into fixed-length int32 id rows `[BOS, tokens..., EOS, PAD...]` for the text tower and back. The model is the
maintained HF `tokenizers` library's BPE over GPT-2 style byte-level pre-tokenization, so every string has an
encoding (no unknown token) and nothing is downloaded; the saved JSON is the library's own format, so a model
release can ship it and any `tokenizers.Tokenizer.from_file` reads it. Training is deterministic given the captions
(the trainer breaks frequency ties by pair ids, not by hash order). Numpy and `tokenizers` only: no jax, no
dataset knowledge; the captioned sources (`captioned`, `synthetic.captions`) call it.
"""
from __future__ import annotations

import os
import pathlib
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # in id order: PAD must be 0, the value batches are padded with


def normalize_caption(text: str) -> str:
    """The canonical form of a caption: NFKC, lowercase, whitespace runs as one space, no outer whitespace.

    Two captions are exact duplicates when their canonical forms are equal; `CaptionTokenizer.decode` returns
    this form.
    """
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def _empty_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE whose normalizer matches `normalize_caption` for standalone users of the JSON."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    # A prefix space makes a sentence's first word the same token as that word anywhere else.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(captions: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> "CaptionTokenizer":
    """Trains a byte-level BPE on `captions` (the TRAIN split's; every other split reuses the result).

    Args:
        captions: training captions (raw; they are normalised as `normalize_caption` does).
        vocab_size: the largest vocabulary, specials and the 256 byte symbols included; training stops earlier when
            no pair occurs `min_frequency` times, so `CaptionTokenizer.vocab_size` may be smaller.
        min_frequency: the fewest occurrences of a pair that becomes a merge.

    Returns:
        The trained tokenizer; identical (same JSON) for the same captions and arguments.

    Raises:
        ValueError: `vocab_size` too small to hold the specials and bytes, or no caption.
    """
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if int(vocab_size) < minimum:
        raise ValueError(f"vocab_size must be >= {minimum} (3 specials + 256 bytes), got {vocab_size}")
    texts = [normalize_caption(c) for c in captions]
    if not any(texts):
        raise ValueError("train_tokenizer needs at least one non-empty caption")
    tok = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    # Standalone users of the saved JSON get the same specials `encode` adds.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))])
    return CaptionTokenizer(tok)


class CaptionTokenizer:
    """Captions <-> fixed-length id rows, over a trained byte-level BPE.

    A row is `[BOS, t_1, ..., t_k, EOS, PAD, ...]` of `context_length` int32 ids, PAD = 0; a caption longer than
    `context_length - 2` tokens loses its tail tokens, never its EOS (the text tower pools at EOS). Picklable, so
    Grain workers can carry it.

    Args:
        tokenizer: a `tokenizers.Tokenizer` holding the specials `<pad>` (id 0), `<bos>` and `<eos>`.

    Attributes:
        vocab_size: the number of ids (the text tower's embedding rows).
        pad_id: 0.
        bos_id: the begin-of-sentence id.
        eos_id: the end-of-sentence id.

    Raises:
        ValueError: a special token is missing or `<pad>` is not id 0.
    """

    def __init__(self, tokenizer: Tokenizer):
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"the tokenizer lacks the special token(s) {missing}")
        if ids[PAD] != 0:
            raise ValueError(f"{PAD} must be id 0 (batches are zero-padded), it is {ids[PAD]}")
        self._tok = tokenizer
        self.pad_id, self.bos_id, self.eos_id = ids[PAD], ids[BOS], ids[EOS]
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTokenizer":
        """Reads a tokenizer JSON written by `save` (or any `tokenizers` JSON with the three specials)."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer as the `tokenizers` JSON (what a model release ships beside the weights)."""
        self._tok.save(str(path))

    def to_json(self) -> str:
        """The JSON `save` writes, as a string."""
        return self._tok.to_str()

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    @staticmethod
    def normalize(text: str) -> str:
        """`normalize_caption`: what `decode(encode([text]))` gives back (absent truncation)."""
        return normalize_caption(text)

    def encode(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """Id rows of `texts`.

        Args:
            texts: captions (raw; normalised first).
            context_length: L, the row length, >= 2 (BOS and EOS).

        Returns:
            int32 [len(texts), L]: BOS, at most L - 2 tokens, EOS, then PAD (0).
        """
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {context_length}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of captions, not one string")
        length = int(context_length)
        out = np.full((len(texts), length), self.pad_id, np.int32)
        if not len(texts):
            return out
        # Specials are placed here, not by the post-processor, so truncation can cut tokens and keep the EOS.
        encodings = self._tok.encode_batch([normalize_caption(t) for t in texts], add_special_tokens=False)
        for row, encoding in zip(out, encodings):
            body = encoding.ids[:length - 2]
            row[0] = self.bos_id
            row[1:1 + len(body)] = body
            row[1 + len(body)] = self.eos_id
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        """Captions of id rows ([n, L] or one [L] row), specials and padding dropped, in normalised form."""
        rows = np.asarray(ids)
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2:
            raise ValueError(f"decode takes [n, L] or [L] ids, got shape {rows.shape}")
        texts = self._tok.decode_batch([[int(i) for i in r] for r in rows], skip_special_tokens=True)
        # The byte-level prefix space comes back as a leading space; normalised text never starts with one.
        return [t[1:] if t.startswith(" ") else t for t in texts]

    def num_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Non-pad ids per row (BOS and EOS included): what the text tower processes."""
        return (np.asarray(ids) != self.pad_id).sum(axis=-1).astype(np.int32)

    def __getstate__(self) -> dict:
        return {"json": self._tok.to_str()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Tokenizer.from_str(state["json"]))

    def __eq__(self, other) -> bool:
        return isinstance(other, CaptionTokenizer) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, eos_id={self.eos_id})"
