"""Image-text evaluation: cross-modal retrieval Recall@K in both directions, and zero-shot classification.

An `ImageTextEvaluator` is the evaluator of a named `config.evals` entry whose probes include `retrieval` (or
`zero_shot`) in an image-text run. On its captioned test split (the captions source's `test_split`, or a captioned
simulator split) it embeds every image with the image tower and every original caption with the text tower, one
query per caption, as the retrieval benchmarks of remote sensing (RSICD, RSITMD, UCM-captions) count them:
text-to-image recall@K (a caption finds its image among the top K), image-to-text recall@K (an image finds any of
its captions among the top K), and mR, the mean of the six recalls at K = 1, 5, 10. `zero_shot` classifies each
image by the class-name prompt it is closest to. The towers come as two functions of the caller (the
Experiment's): images -> joint features, token ids -> joint features.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from oceansar.evals import features as features_lib
from oceansar.evals.retrieval import match_ranks

KS = (1, 5, 10)


def retrieval_metrics(image_feats, caption_feats, caption_image: np.ndarray) -> dict[str, float]:
    """Text-to-image and image-to-text recall@K and their mean (mR).

    Args:
      image_feats: [n_images, D] image features.
      caption_feats: [n_captions, D] caption features.
      caption_image: [n_captions] the image of each caption.
    """
    caption_image = np.asarray(caption_image, np.int64)
    t2i = match_ranks(caption_feats, image_feats, caption_image)
    # Image -> text: each image queried once per own caption; its best-ranked caption decides.
    ranks = match_ranks(np.asarray(image_feats)[caption_image], caption_feats, np.arange(caption_image.size))
    best = np.full(len(image_feats), np.iinfo(np.int64).max)
    np.minimum.at(best, caption_image, ranks)
    out = {f"t2i_r@{k}": float(np.mean(t2i < k)) for k in KS}
    out |= {f"i2t_r@{k}": float(np.mean(best < k)) for k in KS}
    out["mR"] = float(np.mean([out[f"{d}_r@{k}"] for d in ("t2i", "i2t") for k in KS]))
    return out


def zero_shot_accuracy(image_feats, labels: np.ndarray, prompt_feats) -> float:
    """Top-1 accuracy of assigning each image the class whose prompt feature is the most cosine-similar."""
    ranks_of_true = match_ranks(image_feats, prompt_feats, np.asarray(labels, np.int64))
    return float(np.mean(ranks_of_true == 0))


class ImageTextEvaluator:
    """Retrieval and zero-shot evaluation of an image-text model on one captioned test split.

    Args:
      name: the evaluator's name in `config.evals` (the metrics' prefix).
      spec: its `EvalSpec` (probes: retrieval and/or zero_shot; batch_size).
      make_source: builds the captioned test split on first use: records with `image` (and `label` for
        zero-shot), `captions(i)` and `class_names`.
      tokenizer: the run's caption tokenizer.
      context_length: token ids per caption.
      prompt: the zero-shot prompt, with `{}` for the class name.
    """

    def __init__(self, name: str, spec, make_source: Callable[[], object], tokenizer, *, context_length: int,
                 prompt: str = "an image of {}"):
        self.name, self.spec, self.tokenizer = name, spec, tokenizer
        self.context_length, self.prompt = int(context_length), prompt
        self._make_source, self._source = make_source, None

    @property
    def source(self):
        """The captioned test split, built on first use."""
        if self._source is None:
            self._source = self._make_source()
        return self._source

    def _encode_texts(self, embed_text, texts: list[str]) -> np.ndarray:
        """Caption features in fixed-size batches (one compiled shape), padded rows dropped."""
        ids = self.tokenizer.encode(texts, self.context_length)
        b = self.spec.batch_size
        pad = -len(ids) % b
        ids = np.concatenate([ids, np.repeat(ids[-1:], pad, 0)]) if pad else ids
        return np.concatenate([np.asarray(embed_text(ids[i:i + b])) for i in range(0, len(ids), b)])[:len(texts)]

    def __call__(self, embed_image: Callable[[jax.Array], jax.Array], embed_text: Callable[[np.ndarray], jax.Array],
                 *, mesh, progress: bool = False) -> dict[str, float]:
        """Metrics of the two towers on this split, keys prefixed `<name>/`."""
        feats = features_lib.extract_features(embed_image, self.source, batch_size=self.spec.batch_size, mesh=mesh,
                                              progress=progress, desc=f"eval {self.name} images")
        out: dict[str, float] = {}
        if "retrieval" in self.spec.probes:
            captions = [self.source.captions(i) for i in range(len(self.source))]
            caption_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
            caption_feats = self._encode_texts(embed_text, [c for cs in captions for c in cs])
            out |= {f"retrieval/{k}": v for k, v in
                    retrieval_metrics(feats["features"], caption_feats, caption_image).items()}
        if "zero_shot" in self.spec.probes:
            names = list(self.source.class_names)
            prompts = self._encode_texts(embed_text, [self.prompt.format(n) for n in names])
            out["zero_shot/top1"] = zero_shot_accuracy(feats["features"], feats["label"], prompts)
        return {f"{self.name}/{k}": v for k, v in out.items()}

    def headline(self) -> list[tuple[str, str, bool]]:
        """(metric key, column title, higher is better) of the metrics a results table shows."""
        columns = []
        if "retrieval" in self.spec.probes:
            columns += [("retrieval/mR", "mR", True), ("retrieval/t2i_r@1", "text-to-image R@1", True)]
        if "zero_shot" in self.spec.probes:
            columns.append(("zero_shot/top1", "zero-shot top-1", True))
        return [(f"{self.name}/{key}", f"{self.name} {title}", higher) for key, title, higher in columns]
