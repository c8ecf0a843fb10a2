"""Released backbones: export the teacher ViT for fine-tuning and load it back, without pickle.

A release directory holds `model.json` (the ViT's constructor arguments, the input standardisation
and the training config's name) and `params/`, an Orbax checkpoint of the backbone parameters as a
pure nested dict. `load(path)` rebuilds the `ViT` and returns it ready for feature extraction or
fine-tuning with any JAX/Flax training code.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from oceansar.models.vit import ViT


def _model_spec(config) -> dict[str, Any]:
    return {
        "variant": config.model.variant,
        "img_size": config.crops.global_size,
        "in_channels": config.model.in_channels,
        "input_mean": config.data.mean,
        "input_std": config.data.std,
        "input_scale": "uint8 pixels / 255, then (x - input_mean) / input_std",
        "features": "cls",
        "recipe": config.name,
    }


def export(path: str | pathlib.Path, *, teacher_params: nnx.State, config) -> pathlib.Path:
    """Writes the teacher backbone (its head dropped) and its model spec to `path`."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    backbone = jax.device_get(nnx.to_pure_dict(teacher_params["backbone"]))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", backbone)
        ckptr.wait_until_finished()
    (path / "model.json").write_text(json.dumps(_model_spec(config), indent=2))
    return path


def load(path: str | pathlib.Path) -> tuple[ViT, dict[str, Any]]:
    """Restores a released backbone.

    Returns:
      (vit, spec): the `ViT` module with the released weights, and the spec from `model.json`
      (variant, input standardisation). Call `vit(x)["cls"]` on standardised [B,H,W,C] images.
    """
    path = pathlib.Path(path).absolute()
    spec_file = path / "model.json"
    if not spec_file.exists():
        raise FileNotFoundError(f"{spec_file} not found: not an oceansar release directory")
    spec = json.loads(spec_file.read_text())
    vit = ViT(spec["variant"], img_size=spec["img_size"], in_channels=spec["in_channels"],
              rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(vit, nnx.Param)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(params))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / "params", target)
    nnx.replace_by_pure_dict(params, restored)
    nnx.update(vit, params)
    return vit, spec


def standardize(images: np.ndarray | jax.Array, spec: dict[str, Any]) -> jax.Array:
    """Source pixels (uint8, or float in [0, 1]) to the released model's input scale."""
    x = jnp.asarray(images)
    scaled = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    return (scaled - spec["input_mean"]) / spec["input_std"]
