"""Caption uniqueness weights for multi-caption images (WFA, arXiv 2505.11121) and caption-file loaders.

For the captions c_1..c_m of one image, b_j is the smoothed sentence BLEU-4 of c_j against the image's other
captions (sacrebleu, Chen & Cherry method 1: "floor" smoothing with 0.1, effective n-gram order, 13a tokenisation,
lowercased, scaled to [0, 1]); u_j = 1 - b_j + eps and w_j = u_j / sum_k u_k. A caption repeated verbatim finds itself
among the references, so b_j = 1 and its copies get weight ~eps each, while a caption sharing nothing gets the most.
When every caption scores b ~ 1 (all identical) the weights fall back to uniform.

Exact duplicates are folded: the BLEU of every copy of a string is identical (its references are the same multiset),
so it is computed once per distinct string, and `fold_duplicates` merges copies into one caption carrying their summed
weight, which leaves the weighted aggregate sum_j w_j h_j unchanged while the text encoder sees each string once.

This is text processing on the host (sacrebleu, a few thousand sentences per second per core): UCM-captions (2,100
images x 5) takes about 3 s in one process on a busy 2-core machine, less than a pool of workers costs to start.
Nothing here imports jax or oceansar.
"""
from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
from sacrebleu.metrics import BLEU

_BLEU = BLEU(smooth_method="floor", smooth_value=0.1, effective_order=True, lowercase=True)


def caption_bleu(captions: list[str]) -> np.ndarray:
    """Smoothed sentence BLEU-4 in [0, 1] of each caption against the image's other captions.

    Args:
        captions: the m >= 2 captions of one image.

    Returns:
        [m] float64 BLEU, identical for copies of the same string.
    """
    distinct = {}
    for j, c in enumerate(captions):
        if c not in distinct:
            others = captions[:j] + captions[j + 1:]
            distinct[c] = _BLEU.sentence_score(c, others).score / 100.0
    return np.array([distinct[c] for c in captions])


def uniqueness_weights(captions: list[str], eps: float = 0.01) -> np.ndarray:
    """WFA uniqueness weights w_j = (1 - b_j + eps) / sum_k (1 - b_k + eps) of one image's captions.

    Args:
        captions: the image's captions (non-empty strings; one caption gets weight 1).
        eps: floor that keeps exact duplicates from a weight of exactly zero.

    Returns:
        [m] float64 weights summing to 1.
    """
    if not captions:
        raise ValueError("an image needs at least one caption")
    empty = [j for j, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ValueError(f"caption {empty[0]} is empty: an empty caption would score BLEU 0 and get the most weight")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if len(captions) == 1:
        return np.ones(1)
    u = 1.0 - caption_bleu(captions) + eps
    if u.sum() <= 1e-9 * len(captions):
        return np.full(len(captions), 1.0 / len(captions))
    return u / u.sum()


def dataset_weights(captions_per_image: list[list[str]], eps: float = 0.01) -> list[np.ndarray]:
    """`uniqueness_weights` of every image.

    Args:
        captions_per_image: one list of captions per image.
        eps: see `uniqueness_weights`.

    Returns:
        One [m_i] weight array per image.
    """
    out = []
    for i, captions in enumerate(captions_per_image):
        try:
            out.append(uniqueness_weights(list(captions), eps))
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from None
    return out


def fold_duplicates(captions: list[str], weights: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Merge exact duplicate captions, summing their weights (first-appearance order).

    Args:
        captions: one image's captions.
        weights: [m] their weights.

    Returns:
        (distinct captions, [n_distinct] summed weights).
    """
    folded: dict[str, float] = collections.OrderedDict()
    for c, w in zip(captions, np.asarray(weights, np.float64)):
        folded[c] = folded.get(c, 0.0) + w
    return list(folded), np.array(list(folded.values()))


def load_karpathy_captions(path: str | pathlib.Path, split: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Captions of a Karpathy-style JSON (UCM-, Sydney-, RSICD-captions: images[].sentences[].raw).

    Args:
        path: the JSON file.
        split: keep only images with this "split" ("train", "val", "test"); None keeps all.

    Returns:
        (file names, captions per image), in file order.
    """
    path = pathlib.Path(path)
    try:
        images = json.loads(path.read_text())["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a Karpathy caption JSON with an 'images' list ({err})") from None
    names, captions = [], []
    for i, image in enumerate(images):
        if split is not None and image.get("split") != split:
            continue
        try:
            captions.append([s["raw"].strip() for s in image["sentences"]])
        except (KeyError, TypeError):
            raise ValueError(f"{path}: images[{i}] lacks sentences[].raw") from None
        names.append(str(image.get("filename", image.get("imgid", i))))
    return names, captions


def load_numbered_captions(path: str | pathlib.Path) -> tuple[list[str], list[list[str]]]:
    """Captions from lines `<image number> <sentence>` (the Sydney-captions text format).

    Args:
        path: the text file.

    Returns:
        (image numbers as strings, captions per image), images in first-appearance order.
    """
    path = pathlib.Path(path)
    grouped: dict[str, list[str]] = collections.OrderedDict()
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        number, _, sentence = line.strip().partition(" ")
        if not number.isdigit() or not sentence.strip():
            raise ValueError(f"{path}:{line_no}: expected '<image number> <sentence>', got {line!r}")
        grouped.setdefault(number, []).append(sentence.strip())
    return list(grouped), list(grouped.values())
