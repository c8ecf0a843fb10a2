"""Released backbones: export the teacher ViT for fine-tuning and load it back, without pickle.

A release directory holds `model.json` (the ViT's constructor arguments, the input standardisation
and the training config's name) and `params/`, an Orbax checkpoint of the backbone parameters as a
pure nested dict. `load(path)` rebuilds the `ViT` and returns it ready for feature extraction (with
`oceansar.embedding.make_embed_fn` and the spec's input scale) or fine-tuning with any JAX/Flax
training code; `load_params` reads the weights alone into a given structure (`config.init_from`).
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from oceansar import embedding
from oceansar.errors import DataError, DataNotFoundError
from oceansar.models.vit import ViT
from oceansar.spec import RunSpec


def _model_spec(run: RunSpec) -> dict[str, Any]:
    return {
        "variant": run.model.variant,
        "img_size": run.crops.global_size,
        "in_channels": run.model.in_channels,
        "input_mean": run.data.mean,
        "input_std": run.data.std,
        "input_scale": "uint8 pixels / 255, then (x - input_mean) / input_std",
        "features": "cls",
        "recipe": run.name,
    }


def export(path: str | pathlib.Path, *, teacher_params: nnx.State, spec: RunSpec) -> pathlib.Path:
    """Writes the teacher backbone (its head dropped) and its model spec to `path`."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    backbone = jax.device_get(nnx.to_pure_dict(teacher_params["backbone"]))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", backbone)
        ckptr.wait_until_finished()
    (path / "model.json").write_text(json.dumps(_model_spec(spec), indent=2))
    return path


def _read_spec(path: pathlib.Path, field: str) -> dict[str, Any]:
    spec_file = path / "model.json"
    if not spec_file.exists():
        raise DataNotFoundError(f"{field}: {spec_file} not found: not an oceansar release directory")
    return json.loads(spec_file.read_text())


def _name(path) -> str:
    """A tensor's name from its tree path (list indices and their string form read alike)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def load_params(path: str | pathlib.Path, *, like: dict[str, Any], field: str = "release") -> dict[str, Any]:
    """The released backbone's weights as a pure dict shaped like `like` (a backbone's pure dict).

    Raises:
      DataNotFoundError: `path` is no release directory.
      DataError: naming `field` and the first tensor whose shape differs (another variant, image size
        or channel count), before anything is read.
    """
    path = pathlib.Path(path).absolute()
    _read_spec(path, field)
    with ocp.StandardCheckpointer() as ckptr:
        stored = ckptr.metadata(path / "params")
        stored = getattr(stored, "item_metadata", stored)
        have_by_key = {_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
        for key, want in jax.tree_util.tree_flatten_with_path(like)[0]:
            have = have_by_key.get(_name(key))
            if have is None:
                raise DataError(f"{field}: {path} has no tensor {_name(key)} (another variant?)")
            if tuple(want.shape) != tuple(have.shape):
                raise DataError(f"{field}: {path} holds {_name(key)} of shape {tuple(have.shape)}, "
                                f"this model needs {tuple(want.shape)}")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
        return ckptr.restore(path / "params", target)


def load(path: str | pathlib.Path) -> tuple[ViT, dict[str, Any]]:
    """Restores a released backbone.

    Returns:
      (vit, spec): the `ViT` module with the released weights, and the spec from `model.json`
      (variant, input standardisation). Call `vit(x)["cls"]` on standardised [B,H,W,C] images.

    Raises:
      DataNotFoundError: `path` is no release directory.
    """
    path = pathlib.Path(path).absolute()
    spec = _read_spec(path, "release")
    vit = ViT(spec["variant"], img_size=spec["img_size"], in_channels=spec["in_channels"],
              rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(vit, nnx.Param)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(params))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / "params", target)
    nnx.replace_by_pure_dict(params, restored)
    nnx.update(vit, params)
    return vit, spec


def embedder(path: str | pathlib.Path, *, l2_normalize: bool = False):
    """A released backbone's jitted embedding, with the release's input scale and resolution.

    Returns:
      (fn, params, spec): `fn(params, images)` maps source images [B, H, W, C] (uint8, or float in
      [0, 1]) to CLS features [B, D] float32 on the centre view (see `oceansar.embedding`); images
      whose C is not the release's `in_channels` raise a `DataError` naming the release.

    Raises:
      DataNotFoundError: `path` is no release directory.
    """
    path = pathlib.Path(path).absolute()
    vit, spec = load(path)
    graphdef, params = nnx.split(vit, nnx.Param)
    fn = embedding.make_embed_fn(graphdef, mean=spec["input_mean"], std=spec["input_std"], img_size=spec["img_size"],
                                 in_channels=spec["in_channels"], l2_normalize=l2_normalize,
                                 owner=f"the release {path}")
    return fn, params, spec
