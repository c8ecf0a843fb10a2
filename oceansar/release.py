"""Released backbones: export the teacher ViT for fine-tuning and load it back, without pickle.

A release directory holds `model.json` (the ViT's constructor arguments, the input standardisation
and the training config's name) and `params/`, an Orbax checkpoint of the backbone parameters as a
pure nested dict. `load(path)` rebuilds the `ViT` and returns it ready for feature extraction (with
`oceansar.embedding.make_embed_fn` and the spec's input scale) or fine-tuning with any JAX/Flax
training code; `load_params` reads the weights alone into a given structure (`config.init_from`). An image-text
run's release also holds `image_text/` (every parameter of the two-tower model: the text tower, the projections,
the caption aggregator, the temperature), `tokenizer.json` (the caption tokenizer it was trained with) and a `text`
block in `model.json`; `load_image_text` rebuilds that model and its tokenizer.
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


TOKENIZER_FILE = "tokenizer.json"


def _model_spec(run: RunSpec) -> dict[str, Any]:
    text = {} if not run.text.enabled else {"text": {
        k: getattr(run.text, k) for k in ("size", "vocab_size", "context_length", "embed_dim", "aggregation", "loss",
                                          "max_captions")}}
    return text | {
        "variant": run.model.variant,
        "img_size": run.crops.global_size,
        "in_channels": run.model.in_channels,
        "input_mean": run.data.mean,
        "input_std": run.data.std,
        "input_scale": "uint8 pixels / 255, then (x - input_mean) / input_std",
        "features": "cls",
        "recipe": run.name,
    }


def export(path: str | pathlib.Path, *, teacher_params: nnx.State, spec: RunSpec, tokenizer=None) -> pathlib.Path:
    """Writes the teacher backbone (its head dropped) and its model spec to `path`; for an image-text run, also
    the whole two-tower model and its caption `tokenizer`."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    backbone = jax.device_get(nnx.to_pure_dict(teacher_params["backbone"]))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", backbone)
        if spec.text.enabled:
            ckptr.save(path / "image_text", jax.device_get(nnx.to_pure_dict(teacher_params)))
        ckptr.wait_until_finished()
    if spec.text.enabled:
        if tokenizer is None:
            raise ValueError("release.export: an image-text release needs its caption tokenizer")
        tokenizer.save(path / TOKENIZER_FILE)
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


def load_image_text(path: str | pathlib.Path):
    """Restores an image-text release: the two-tower model and the caption tokenizer it was trained with.

    Returns:
      (model, tokenizer, spec): the `ImageTextModel` (`encode_image` on standardised images at `img_size`,
      `encode_text` on `tokenizer.encode(captions, context_length)`), the `CaptionTokenizer`, and `model.json`.

    Raises:
      DataNotFoundError: `path` is no release directory, or no image-text one.
    """
    from oceansar.data.tokenizer import CaptionTokenizer
    from oceansar.models.image_text import ImageTextModel

    path = pathlib.Path(path).absolute()
    spec = _read_spec(path, "release")
    if "text" not in spec or not (path / "image_text").exists():
        raise DataNotFoundError(f"release: {path} holds a backbone only, not an image-text model")
    t = spec["text"]
    model = ImageTextModel(spec["variant"], img_size=spec["img_size"], in_channels=spec["in_channels"],
                           text_size=t["size"], vocab_size=t["vocab_size"], context_length=t["context_length"],
                           embed_dim=t["embed_dim"], aggregation=t["aggregation"], loss=t["loss"], rngs=nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(params))
    with ocp.StandardCheckpointer() as ckptr:
        nnx.replace_by_pure_dict(params, ckptr.restore(path / "image_text", target))
    nnx.update(model, params)
    return model, CaptionTokenizer.load(path / TOKENIZER_FILE), spec
