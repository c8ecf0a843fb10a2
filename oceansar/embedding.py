"""The embedding of source images by a backbone: the one jitted function every consumer of features uses.

Source pixels (uint8, or float already in [0, 1]) are standardised with the run's input scale, one
deterministic centre view at the training resolution is taken, and the backbone's CLS token (or CLS
concatenated with the mean patch token) is returned, optionally L2-normalised. The evaluators, the
dynamic-pruning re-embedding, `--mode=embed` and `release.load` users all go through it, so a
released backbone gives exactly the features its training run measured.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from oceansar import augment
from oceansar.errors import DataError

FEATURES = ("cls", "cls+mean_patch")


def make_embed_fn(graphdef: nnx.GraphDef, *, mean: float, std: float, img_size: int, in_channels: int,
                  features: str = "cls", l2_normalize: bool = False,
                  owner: str = "the backbone") -> Callable[[Any, jax.Array], jax.Array]:
    """`embed(backbone_params, images [B, H, W, C]) -> [B, D]` float32 features, jitted (one compile per shape).

    Args:
      graphdef: the backbone's NNX graph definition (`nnx.split(vit, nnx.Param)[0]`).
      mean, std: the input standardisation of uint8 / 255 pixels.
      img_size: side of the centre view (the training's global crop size).
      in_channels: the channels the backbone takes; images with another count are refused with a
        `DataError` before anything is traced.
      features: "cls" or "cls+mean_patch".
      l2_normalize: divide each feature vector by its L2 norm.
      owner: the backbone as that error names it (a release names its directory).
    """
    if features not in FEATURES:
        raise ValueError(f"features={features!r}; known: {FEATURES}")

    def embed(params, images):
        model = nnx.merge(graphdef, params)
        x = augment.center_view(augment.standardize(images, mean=mean, std=std), img_size)
        out = model(x, train=False)
        feats = out["cls"] if features == "cls" else jnp.concatenate(
            [out["cls"], jnp.mean(out["patch"], axis=1)], axis=-1)
        if l2_normalize:
            feats = feats / jnp.maximum(jnp.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
        return feats

    jitted = jax.jit(embed)

    def checked(params, images):
        # Shapes are static, known here: a wrong channel count is one line, not an error deep in a trace.
        if images.shape[-1] != in_channels:
            raise DataError(f"images of shape {tuple(images.shape)} have {images.shape[-1]} channels, {owner} "
                            f"expects {in_channels} (model.in_channels)")
        return jitted(params, images)

    return checked
