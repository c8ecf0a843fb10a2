"""Released backbones in the layout the PyTorch world loads: export, load, and import from timm / DINOv2 files.

A release directory is a Hugging Face-style model folder:

- `model.safetensors`: the teacher ViT's weights under timm's `VisionTransformer` names, in torch layout
  (`oceansar.models.timm_layout`; a ResNet's weights and batch statistics under timm's `resnet50` names,
  `oceansar.models.resnet_layout`), so `timm.create_model("local-dir:<release>", pretrained=True)`, a
  `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), in_chans=1, ...)` or a plain
  `load_state_dict` takes it.
- `config.json`: timm's hub config (`architecture`, `model_args`, `pretrained_cfg` with the input size, mean and
  std) plus an `oceansar` block: the variant string, the input scale (uint8 pixels / 255, then standardised; for
  SAR sources the sigma0 dB range mapped onto [0, 1]), the recipe, and for an image-text run its text tower.
- `README.md`: a model card (recipe, data, curation policy, examples seen, the evaluation table, the command).
- An iBOT run adds `oceansar_extra.safetensors` (its mask token, which has no timm name).
- An image-text run adds `image_text.safetensors` (every parameter of the two-tower model under its own dotted
  names) and `tokenizer.json` (the caption tokenizer).

No pickle and no code: `load` and `load_params` read the safetensors back. `load_params` also takes weights that
oceansar did not write (`config.init_from`: a timm / DINO / DINOv2 / transformers ViT folder or `.safetensors`
file), adapting channels and the position grid and reporting every tensor loaded, adapted, skipped or created.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys
from typing import Any

import jax
import numpy as np
from flax import nnx

from oceansar import embedding
from oceansar.data.synthetic import DB_RANGE
from oceansar.errors import DataError, DataNotFoundError
from oceansar.models import resnet_layout, timm_layout
from oceansar.models.backbone import describe, make_backbone
from oceansar.models.resnet import ResNet
from oceansar.models.vit import ViT
from oceansar.spec import RunSpec
from oceansar.train.state import STATE_VARIABLES

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
IMAGE_TEXT_FILE = "image_text.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# What an oceansar model holds beyond timm's names (the iBOT mask token): beside the weights, so that timm's
# strict `load_state_dict` still takes `model.safetensors` and `config.init_from` continues iBOT with it.
EXTRA_FILE = "oceansar_extra.safetensors"
INPUT_SCALE = "uint8 pixels / 255, then (x - input_mean) / input_std"

# Sources whose uint8 pixels are sigma0 in dB over `DB_RANGE` (the others are plain image pixels).
_SIGMA0_SOURCES = ("synthetic_wv", "wv_files", "tfds")
# timm's registered names for our (size, patch) pairs; other pairs name the nearest one and spell out every size
# argument in `model_args` (timm's entry points let keyword arguments override their defaults).
_TIMM_SIZE = {"Ti": "tiny", "S": "small", "B": "base", "L": "large"}
_TIMM_NAMES = {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch8_224", "vit_base_patch16_224",
               "vit_base_patch8_224", "vit_large_patch16_224"}


def _timm_architecture(variant: str) -> str:
    if describe(variant)["kind"] == "resnet":
        return {"R50": "resnet50"}.get(variant, "resnet26")  # the toy spells out its sizes in `model_args`
    size, patch = variant.split("/")
    name = f"vit_{_TIMM_SIZE.get(size, 'small')}_patch{patch}_224"
    return name if name in _TIMM_NAMES else "vit_small_patch16_224"


def _title(variant: str) -> str:
    """The backbone as a model card names it: "ViT-S/16", "ResNet-50"."""
    return f"ResNet-{variant[1:]}" if describe(variant)["kind"] == "resnet" else f"ViT-{variant}"


def _layout(variant: str):
    """The module mapping the variant's backbone to and from timm's names."""
    return resnet_layout if describe(variant)["kind"] == "resnet" else timm_layout


def _like_layout(like: dict[str, Any]):
    """The layout module of a backbone's pure dict, told by its top-level names."""
    return resnet_layout if "layer1" in like else timm_layout


def _ours(run: RunSpec) -> dict[str, Any]:
    """The `oceansar` block of a pretraining run's `config.json`."""
    ours = {
        "variant": run.model.variant,
        "img_size": run.crops.global_size,
        "in_channels": run.model.in_channels,
        "layer_scale": run.model.layer_scale,
        "input_mean": run.data.mean,
        "input_std": run.data.std,
        "input_scale": INPUT_SCALE,
        "sigma0_db_range": (list(run.data.safe.db_range) if run.data.source == "safe"
                            else list(DB_RANGE) if run.data.source in _SIGMA0_SOURCES else None),
        "features": "cls",
        "recipe": run.name,
    }
    if run.text.enabled:
        ours["text"] = {k: getattr(run.text, k) for k in ("size", "vocab_size", "context_length", "embed_dim",
                                                           "aggregation", "loss", "max_captions")}
    return ours


def _hub_config(ours: dict[str, Any], *, num_classes: int = 0, label_names: list[str] | None = None
                ) -> dict[str, Any]:
    """`config.json`: timm's hub config around the `oceansar` block."""
    arch = describe(ours["variant"])
    size, channels = ours["img_size"], ours["in_channels"]
    resnet = arch["kind"] == "resnet"
    if resnet:
        model_args = {"in_chans": channels, "num_classes": num_classes, "global_pool": "avg"}
        if ours["variant"] not in ("R50", "R26"):
            model_args |= {"layers": list(arch["layers"]), "channels": list(arch["channels"])}
    else:
        model_args = {"img_size": size, "patch_size": arch["patch"], "in_chans": channels, "embed_dim": arch["width"],
                      "depth": arch["depth"], "num_heads": arch["heads"], "mlp_ratio": arch["mlp_dim"] / arch["width"],
                      "num_classes": num_classes, "global_pool": "token"}
        if ours.get("layer_scale"):
            model_args["init_values"] = ours["layer_scale"]
    config = {
        "architecture": _timm_architecture(ours["variant"]),
        "num_classes": num_classes,
        "num_features": arch["width"],
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": f"oceansar_{ours['recipe']}", "custom_load": False, "input_size": [channels, size, size],
            "fixed_input_size": not resnet, "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
            "mean": [ours["input_mean"]] * channels, "std": [ours["input_std"]] * channels, "num_classes": num_classes,
            "pool_size": [size // arch["patch"]] * 2 if resnet else None,
            "first_conv": "conv1" if resnet else "patch_embed.proj", "classifier": "fc" if resnet else "head",
        },
        "oceansar": ours,
    }
    if label_names:
        config["label_names"] = label_names
    return config


def _card(config: dict[str, Any], training: list[str], summary: dict[str, Any] | None, command: str | None,
          *, what: str) -> str:
    """The model card: what the weights are, how to load them, what they were trained on and how they scored."""
    ours = config["oceansar"]
    norm = (f"uint8 pixels / 255, then (x - {ours['input_mean']}) / {ours['input_std']}"
            + (f"; pixels are sigma0 in dB, {ours['sigma0_db_range'][0]} to {ours['sigma0_db_range'][1]} dB "
               "mapped linearly onto 0-255 (values outside clip)" if ours.get("sigma0_db_range") else ""))
    args = config["model_args"]
    lines = [
        f"# oceansar `{ours['recipe']}`: {_title(ours['variant'])} ({config['architecture']} layout)", "",
        f"{what} ({ours['in_channels']} input channel(s), {ours['img_size']} px).", "",
        "## Load", "",
        "```python",
        "import timm",
        'model = timm.create_model("local-dir:/path/to/this/folder", pretrained=True)',
        f'# or: timm.create_model("{config["architecture"]}", pretrained=True, '
        f'pretrained_cfg_overlay=dict(file="model.safetensors"),',
        "#         " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")",
        "```", "",
        "In JAX: `oceansar.release.load(path)` (the Flax backbone) or `oceansar.release.embedder(path)`.", "",
        f"Input: {norm}.", "",
        "## Training", "",
        *[f"- {line}" for line in training],
    ]
    if summary and "examples_seen" in summary:
        lines.append(f"- examples seen: {summary['examples_seen']}")
    if command:
        lines.append(f"- command: `{command}`")
    if summary and summary.get("final"):
        at_init = summary.get("at_init", {})
        lines += ["", "## Evaluation", "", "Bootstrap std over the test set where given.", "",
                  "| metric | this model | same network at random init |", "|---|---|---|"]
        for key, value in sorted(summary["final"].items()):
            if key.endswith("_std"):
                continue
            std = summary["final"].get(f"{key}_std")
            cell = f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
            init = at_init.get(key)
            lines.append(f"| {key} | {cell} | {'' if init is None else f'{init:.4f}'} |")
    return "\n".join(lines) + "\n"


def _command() -> str | None:
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith("launch.py") else None


def _flat(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    return {_name(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def export(path: str | pathlib.Path, *, teacher_params: nnx.State, spec: RunSpec, tokenizer=None,
           summary: dict[str, Any] | None = None) -> pathlib.Path:
    """Writes the teacher backbone (its head dropped), `config.json` and the model card to `path`; for an image-text
    run, also the whole two-tower model and its caption `tokenizer`.

    Args:
      path: the release directory (replaced when it exists).
      teacher_params: the teacher's parameters (`state.teacher`).
      spec: the run's spec.
      tokenizer: an image-text run's caption tokenizer.
      summary: the finished run's summary (`summary.json`): examples seen and the evaluation table of the card.
    """
    path = pathlib.Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    backbone = jax.device_get(nnx.to_pure_dict(teacher_params["backbone"]))
    config = _hub_config(_ours(spec))
    meta = {"oceansar_variant": spec.model.variant, "oceansar_recipe": spec.name}
    timm_layout.write_safetensors(path / WEIGHTS_FILE, _layout(spec.model.variant).to_timm(backbone), meta)
    if spec.ibot.enabled:
        timm_layout.write_safetensors(path / EXTRA_FILE, {"mask_token": backbone["mask_token"]}, meta)
    if spec.text.enabled:
        if tokenizer is None:
            raise ValueError("release.export: an image-text release needs its caption tokenizer")
        timm_layout.write_safetensors(path / IMAGE_TEXT_FILE,
                                      _flat(jax.device_get(nnx.to_pure_dict(teacher_params))), meta)
        tokenizer.save(path / TOKENIZER_FILE)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    objective = (f"image-text ({spec.text.aggregation} caption aggregation)" if spec.text.enabled
                 else "DINO" + (" + iBOT" if spec.ibot.enabled else ""))
    training = [f"recipe `{spec.name}`, objective {objective}",
                f"data: `{spec.data.source}`" + (f" ({spec.data.root})" if spec.data.root
                                                 else f", {spec.data.num_samples} images"),
                f"curation: pruning policy `{spec.pruning.policy}`"]
    (path / CARD_FILE).write_text(_card(config, training, summary, _command(), what=(
        f"A self-supervised {_title(spec.model.variant)} backbone trained by oceansar's `{spec.name}` recipe; "
        "features: " + ("the globally average-pooled last stage (batch norm by its running statistics)"
                        if spec.model.kind == "resnet" else "the CLS token after the final LayerNorm"))))
    return path


def export_finetuned(path: str | pathlib.Path, *, params: dict[str, Any], backbone: dict[str, Any], task: str,
                     class_names: list[str], targets: list[str], target_mean: np.ndarray, target_std: np.ndarray,
                     summary: dict[str, Any], recipe: str) -> pathlib.Path:
    """Writes a fine-tuned network (backbone and head, timm layout) with its config and card to `path`.

    A regression head is written in physical units: the target standardisation of training is folded into its
    weights (w * std, b * std + mean), so timm's outputs need no post-processing.

    Args:
      path: the release directory (replaced when it exists).
      params: the `Classifier`'s pure parameter dict ("backbone", "head").
      backbone: the `oceansar` block the backbone came with (variant, img_size, input scale, ...).
      task: classification | regression.
      class_names: the classes, in output order (classification).
      targets: the regressed record fields, in output order (regression).
      target_mean, target_std: the training targets' standardisation (regression).
      summary: the fine-tuning summary (its test metrics go into the card).
      recipe: the config's name.
    """
    path = pathlib.Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    kernel, bias = np.asarray(params["head"]["kernel"], np.float32), np.asarray(params["head"]["bias"], np.float32)
    if task == "regression":
        kernel, bias = kernel * target_std, bias * target_std + target_mean
    head = "fc" if describe(backbone["variant"])["kind"] == "resnet" else "head"
    state = _layout(backbone["variant"]).to_timm(params["backbone"]) | {f"{head}.weight": kernel.T.copy(),
                                                                         f"{head}.bias": bias}
    labels = class_names if task == "classification" else targets
    ours = {k: v for k, v in backbone.items() if k != "text"} | {
        "recipe": recipe, "input_scale": INPUT_SCALE, "features": "cls", "task": task,
        "outputs": "logits" if task == "classification" else "targets in their record units"}
    config = _hub_config(ours, num_classes=len(labels), label_names=labels)
    timm_layout.write_safetensors(path / WEIGHTS_FILE, state, {"oceansar_variant": ours["variant"],
                                                               "oceansar_recipe": recipe})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    what = f"{_title(ours['variant'])} fine-tuned for {task} of " + (
        f"{len(labels)} classes" if task == "classification" else ", ".join(targets))
    training = [f"fine-tuned by oceansar's `{recipe}` recipe ({summary['mode']}), {summary['epochs']} epochs on "
                f"{summary['train_records']} records", f"initialised from `{summary['init_from'] or 'random'}`"]
    (path / CARD_FILE).write_text(_card(config, training, summary, _command(), what=what))
    return path


def is_release(path: str | pathlib.Path) -> bool:
    """True when `path` is a directory written by `export`."""
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file() and "oceansar" in json.loads(
        (path / CONFIG_FILE).read_text())


def read_config(path: str | pathlib.Path, field: str = "release") -> dict[str, Any]:
    """The `oceansar` block of a release's `config.json` (variant, img_size, in_channels, input scale, ...).

    Raises:
      DataNotFoundError: naming `field` when `path` is no oceansar release directory.
    """
    path = pathlib.Path(path).absolute()
    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise DataNotFoundError(f"{field}: {config_file} or {path / WEIGHTS_FILE} not found: not an oceansar "
                                "release directory (--mode=export writes one)")
    config = json.loads(config_file.read_text())
    if "oceansar" not in config:
        raise DataNotFoundError(f"{field}: {config_file} has no `oceansar` block: a model folder oceansar did not "
                                "write (config.init_from takes those)")
    return config["oceansar"]


def _name(path) -> str:
    """A tensor's name from its tree path (list indices and their string form read alike)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _weights_file(path: pathlib.Path, field: str) -> pathlib.Path:
    if path.is_file():
        return path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    raise DataNotFoundError(f"{field}: {path} is neither a .safetensors file nor a folder holding {WEIGHTS_FILE}")


def load_params(path: str | pathlib.Path, *, like: dict[str, Any], field: str = "release"
                ) -> tuple[dict[str, Any], timm_layout.LoadReport]:
    """A backbone's weights as a pure dict shaped like `like` (a backbone's pure dict), with what was done.

    `path` is an oceansar release, any model folder holding `model.safetensors` (timm, Hugging Face) or a
    `.safetensors` file, in timm's, DINO's / DINOv2's or transformers' ViT layout (`timm_layout.from_timm`), or for a
    ResNet timm's or torchvision's (`resnet_layout.from_timm`, batch-norm running statistics included): input
    channels and the position grid are adapted to `like`'s, heads skipped, the iBOT mask token created when absent.

    Raises:
      DataNotFoundError: naming `field` when there is no such file.
      DataError: naming `field`, the file and the tensor when the weights do not fit `like` (another width, depth
        or patch size, LayerScale on one side only, register tokens), before anything is loaded.
    """
    file = _weights_file(pathlib.Path(path).absolute(), field)
    try:
        state = timm_layout.read_safetensors(file)
        if (file.parent / EXTRA_FILE).is_file() and file.name == WEIGHTS_FILE:
            state |= timm_layout.read_safetensors(file.parent / EXTRA_FILE)
        return _like_layout(like).from_timm(state, jax.tree.map(np.asarray, like), source=str(file))
    except ValueError as e:
        raise DataError(f"{field}: {e}") from None


def load(path: str | pathlib.Path) -> tuple[ViT | ResNet, dict[str, Any]]:
    """Restores a released backbone.

    Returns:
      (backbone, spec): the `ViT` or `ResNet` module with the released weights (and batch statistics), and the
      `oceansar` block of `config.json` (variant, input standardisation). Call `backbone(x)["cls"]` on
      standardised [B,H,W,C] images.

    Raises:
      DataNotFoundError: `path` is no release directory.
    """
    path = pathlib.Path(path).absolute()
    spec = read_config(path)
    backbone = make_backbone(spec["variant"], img_size=spec["img_size"], in_channels=spec["in_channels"],
                             layer_scale=spec.get("layer_scale", 0.0), dtype=np.float32, param_dtype=np.float32,
                             rngs=nnx.Rngs(0))
    _, params = nnx.split(backbone, STATE_VARIABLES)
    loaded, report = load_params(path, like=nnx.to_pure_dict(params))
    if report.adapted:  # our own file at our own shapes: anything adapted means the release is inconsistent
        raise DataError(f"release: {path} does not match its own config.json: {report.summary()}")
    nnx.replace_by_pure_dict(params, loaded)
    nnx.update(backbone, params)
    return backbone, spec


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
    backbone, spec = load(path)
    graphdef, params = nnx.split(backbone, STATE_VARIABLES)
    fn = embedding.make_embed_fn(graphdef, mean=spec["input_mean"], std=spec["input_std"], img_size=spec["img_size"],
                                 in_channels=spec["in_channels"], l2_normalize=l2_normalize,
                                 owner=f"the release {path}")
    return fn, params, spec


def load_image_text(path: str | pathlib.Path):
    """Restores an image-text release: the two-tower model and the caption tokenizer it was trained with.

    Returns:
      (model, tokenizer, spec): the `ImageTextModel` (`encode_image` on standardised images at `img_size`,
      `encode_text` on `tokenizer.encode(captions, context_length)`), the `CaptionTokenizer`, and the `oceansar`
      block of `config.json`.

    Raises:
      DataNotFoundError: `path` is no release directory, or no image-text one.
      DataError: the file lacks one of the model's tensors or holds it at another shape.
    """
    from oceansar.data.tokenizer import CaptionTokenizer
    from oceansar.models.image_text import ImageTextModel

    path = pathlib.Path(path).absolute()
    spec = read_config(path)
    if "text" not in spec or not (path / IMAGE_TEXT_FILE).is_file():
        raise DataNotFoundError(f"release: {path} holds a backbone only, not an image-text model")
    t = spec["text"]
    model = ImageTextModel(spec["variant"], img_size=spec["img_size"], in_channels=spec["in_channels"],
                           text_size=t["size"], vocab_size=t["vocab_size"], context_length=t["context_length"],
                           embed_dim=t["embed_dim"], aggregation=t["aggregation"], loss=t["loss"],
                           layer_scale=spec.get("layer_scale", 0.0), rngs=nnx.Rngs(0))
    _, params = nnx.split(model, nnx.Param)
    stored = timm_layout.read_safetensors(path / IMAGE_TEXT_FILE)

    def take(key, like):
        name = _name(key)
        if name not in stored or stored[name].shape != like.shape:
            raise DataError(f"release: {path / IMAGE_TEXT_FILE} lacks {name} of shape {like.shape} (has "
                            f"{getattr(stored.get(name), 'shape', None)})")
        return stored[name].astype(like.dtype)

    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(params)))
    nnx.update(model, params)
    return model, CaptionTokenizer.load(path / TOKENIZER_FILE), spec
