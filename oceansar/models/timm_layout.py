"""Our ViT's weights in timm's `VisionTransformer` layout, both ways, and the safetensors files that carry them.

`to_timm` turns the backbone's pure parameter dict (`nnx.to_pure_dict(nnx.state(vit, nnx.Param))`) into the flat
state dict of timm's `VisionTransformer` in torch layout, so `model.load_state_dict(...)` takes our released weights.
`from_timm` goes the other way: it fills a parameter dict shaped like ours from a timm state dict, from an original
DINO / iBOT / DINOv2 checkpoint (same names, plus a mask token, perhaps under a `module.` or `backbone.` prefix) or
from a Hugging Face transformers `Dinov2Model` / `ViTModel` one, adapting the input channels and the position grid
and returning a `LoadReport` of everything it loaded, adapted, skipped or left at its initial value: a tensor that
would change the function and has no place in our model raises instead. Everything here is numpy: no torch, no jax,
so a checkpoint converts on any host; building the model and `nnx.update` are the caller's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

# Which file tensors are classifier or pooling heads, i.e. not part of the backbone's function: skipped.
# (`fc_norm` is the LayerNorm of timm's global-average-pool models: it follows the pooling, so it is a head too.)
_HEAD_PREFIXES = ("head.", "head_dist.", "fc_norm.", "attn_pool.", "pooler.", "classifier.")
# Wrappers around a backbone in training checkpoints (DDP's `module.`, DINO's `backbone.`, transformers'
# task-model attributes `dinov2.` / `vit.`, Lightning's `model.`): stripped from the front of every name.
_PREFIXES = ("module.", "backbone.", "model.", "dinov2.", "vit.")
# The transformers names (Dinov2Model, ViTModel) and their timm names; the query/key/value triple is fused apart.
_HF_NAMES = [(re.compile(p), r) for p, r in [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.(?:norm1|layernorm_before)\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.(?:norm2|layernorm_after)\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.(?:mlp\.fc1|intermediate\.dense)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.(?:mlp\.fc2|output\.dense)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
# Flax leaf names and torch's.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Low-precision float dtypes a released file may hold (DINOv2 and transformers releases are often bf16/fp16).
_NARROW = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn),
           np.dtype(ml_dtypes.float8_e5m2)}
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `from_timm` did with each tensor; nothing is loaded without appearing here.

    Attributes:
        source: the file (or the caller's description) the tensors came from.
        layout: the layout detected from the names ("timm", "transformers") and any prefix stripped.
        loaded: our parameter names (dotted paths of the pure dict) filled from the file.
        adapted: our parameter name -> what was done to the file's tensor beyond the layout change (a subset of
            `loaded`).
        skipped: the file's names of tensors our backbone does not use (classifier and pooling heads).
        created: our parameter names the file lacks, kept at their initial values (the iBOT mask token).
    """

    source: str
    layout: str
    loaded: tuple[str, ...]
    adapted: Mapping[str, str]
    skipped: tuple[str, ...]
    created: tuple[str, ...]

    def summary(self) -> str:
        """One paragraph for the logs."""
        text = f"Loaded {len(self.loaded)} tensors from {self.source} ({self.layout} layout)."
        if self.adapted:
            text += " Adapted: " + "; ".join(f"{k}: {v}" for k, v in self.adapted.items()) + "."
        if self.skipped:
            text += f" Skipped {len(self.skipped)} tensors our backbone does not use: {', '.join(self.skipped)}."
        if self.created:
            text += f" Not in the file, kept at their initial values: {', '.join(self.created)}."
        return text


def leaves(tree: Mapping, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of a nested mapping (a pure parameter dict), depth first in its order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,), value


def dotted(path: tuple) -> str:
    """A tree path as our dotted parameter name ("blocks.0.fc1.kernel")."""
    return ".".join(str(p) for p in path)


def _timm_name(path: tuple) -> str:
    """timm's name of our parameter at `path` (e.g. ("blocks", 0, "fc1", "kernel") -> "blocks.0.mlp.fc1.weight")."""
    parts = [str(p) for p in path]
    if len(parts) == 1 and parts[0] in ("cls_token", "pos_embed", "mask_token"):
        return parts[0]
    if len(parts) == 2 and parts[0] in ("patch_embed", "norm") and parts[1] in _TORCH_LEAF:
        return f"{'patch_embed.proj' if parts[0] == 'patch_embed' else 'norm'}.{_TORCH_LEAF[parts[1]]}"
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] in ("ls1", "ls2"):
        return f"blocks.{parts[1]}.{parts[2]}.gamma"
    if len(parts) >= 4 and parts[0] == "blocks" and parts[-1] in _TORCH_LEAF:
        module = "mlp." + parts[2] if parts[2] in ("fc1", "fc2") else ".".join(parts[2:-1])
        return f"blocks.{parts[1]}.{module}.{_TORCH_LEAF[parts[-1]]}"
    raise ValueError(f"{dotted(path)}: not a parameter of oceansar's ViT backbone; pass the backbone's pure dict "
                     f"(nnx.to_pure_dict(nnx.state(vit, nnx.Param)))")


def _to_torch(name: str, x: np.ndarray) -> np.ndarray:
    if name == "patch_embed.proj.weight":
        return x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if name.endswith(".weight") and x.ndim == 2:
        return x.T  # Linear: [in, out] -> [out, in]
    return x


def _from_torch(name: str, x: np.ndarray) -> np.ndarray:
    if name == "patch_embed.proj.weight" and x.ndim == 4:
        return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if name.endswith(".weight") and x.ndim == 2:
        return x.T
    return x


def _order(name: str) -> tuple:
    """timm's state-dict order: tokens, patch embedding, blocks in order (their modules as timm's Block), norm."""
    top = ["cls_token", "pos_embed", "patch_embed", "blocks", "norm"]
    parts, leaf = name.split("."), name.endswith(".bias")
    if parts[0] != "blocks":
        return top.index(parts[0]), 0, 0, leaf
    inner = ["norm1", "attn.qkv", "attn.proj", "ls1", "norm2", "mlp.fc1", "mlp.fc2", "ls2"]
    return 3, int(parts[1]), inner.index(".".join(parts[2:-1])), leaf


def to_timm(params: Mapping) -> dict[str, np.ndarray]:
    """Our backbone's parameters as the state dict of timm's `VisionTransformer`, in torch layout.

    The result loads with `load_state_dict(..., strict=True)` into
    `timm.models.vision_transformer.VisionTransformer(img_size, patch_size, in_chans, embed_dim, depth, num_heads,
    mlp_ratio=4, num_classes=0, init_values=layer_scale or None)` of the same variant; the patch tokens come out in
    the same order and timm's `forward_features` equals our `{"cls", "patch"}` concatenated. Our fused qkv columns are
    already timm's [q heads, k heads, v heads] (our `Attention` reshapes to 3 * heads and splits q, k, v in that
    order, as timm's `reshape(B, N, 3, heads, head_dim)`), so only the transposes differ.

    Our iBOT `mask_token` has no timm tensor (timm's `VisionTransformer` has no masking) and is left out; DINOv2's
    checkpoints carry one, and `from_timm` reads it from those.

    Args:
        params: the backbone's pure dict, `nnx.to_pure_dict(nnx.state(vit, nnx.Param))` (jax or numpy leaves).

    Returns:
        {timm name: contiguous numpy array}, in timm's order, in the parameters' dtype.
    """
    out = {}
    for path, leaf in leaves(params):
        if path == ("mask_token",):
            continue
        name = _timm_name(path)
        out[name] = np.ascontiguousarray(_to_torch(name, np.asarray(leaf)))
    return dict(sorted(out.items(), key=lambda item: _order(item[0])))


def strip_prefixes(name: str) -> tuple[str, str]:
    """The name without wrapper prefixes, and the prefix taken off."""
    taken = ""
    while (prefix := next((p for p in _PREFIXES if name.startswith(p)), None)) is not None:
        name, taken = name[len(prefix):], taken + prefix
    return name, taken


def _canonical(state: Mapping[str, Any], source: str) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """The file's tensors under timm's names.

    Returns:
        (tensors, origin, layout): timm name -> array, timm name -> the file's name(s), and the detected layout.
    """
    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    stripped: set[str] = set()
    names = {}
    for key in state:
        name, prefix = strip_prefixes(key)
        stripped.add(prefix)
        names[key] = name
    hf = any(n.startswith(("embeddings.", "encoder.layer.")) for n in names.values())
    qkv: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]] = {}

    def put(name, value, where):
        if name in tensors:
            raise ValueError(f"{source}: {origin[name]} and {where} both map to {name}; pass one backbone's "
                             f"state dict")
        tensors[name], origin[name] = value, where

    for key, name in names.items():
        if hf:
            if (m := _HF_QKV.fullmatch(name)) is not None:
                qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = (key, state[key])
                continue
            name = next((p.sub(r, name) for p, r in _HF_NAMES if p.fullmatch(name)), name)
        else:
            # DINOv2's FSDP BlockChunk nests blocks as blocks.<chunk>.<global index>; iBOT calls its mask token
            # masked_embed.
            name = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", name)
            name = "mask_token" if name == "masked_embed" else name
        put(name, state[key], key)
    for (layer, kind), parts in qkv.items():
        for which in ("query", "key", "value"):
            if which not in parts:
                raise ValueError(f"{source}: encoder.layer.{layer}.attention.attention.{which}.{kind} is missing "
                                 f"(the file has {', '.join(k for k, _ in parts.values())}); the file is incomplete")
        # Query, key and value stacked along the output axis: timm's fused qkv (and its HF conversion).
        fused = np.concatenate([np.asarray(parts[w][1]) for w in ("query", "key", "value")], axis=0)
        put(f"blocks.{layer}.attn.qkv.{kind}", fused,
            f"encoder.layer.{layer}.attention.attention.{{query,key,value}}.{kind}")
    prefixes = sorted(p for p in stripped if p)
    layout = ("transformers" if hf else "DINO/DINOv2 (timm names, mask token)" if "mask_token" in tensors
              else "timm") + (f", prefix {', '.join(map(repr, prefixes))} stripped"
                                                   if prefixes else "")
    return tensors, origin, layout


def as_float32(x: Any) -> np.ndarray:
    """A file tensor as a float32 numpy array (copied only when its dtype differs)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype != np.float32 else x


def adapt_channels(w: np.ndarray, channels: int) -> tuple[np.ndarray, str]:
    """timm's `adapt_input_conv` on our [p, p, C_in, D] patch kernel: C_in filters -> `channels` filters."""
    c_in = w.shape[2]
    if channels == 1:
        # A gray image seen as C_in equal channels gives conv(gray, sum_c W_c): the summed filter keeps the function.
        return w.sum(axis=2, keepdims=True), f"summed the {c_in} input-channel filters into 1 (timm adapt_input_conv)"
    reps = math.ceil(channels / c_in)
    w = np.tile(w, (1, 1, reps, 1))[:, :, :channels] * (c_in / channels)
    return w, (f"repeated the {c_in} input-channel filters cyclically to {channels} and scaled them by "
               f"{c_in}/{channels} (timm adapt_input_conv)")


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of `jax.image.resize(..., "bicubic", antialias=False)` along one axis.

    The same arithmetic as JAX's `compute_weight_mat`: Keys' cubic kernel (a = -0.5) at half-pixel centres, each
    row renormalised over the input samples it reaches (so edges are not clamped, unlike torch's bicubic).
    """
    sample = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x = np.abs(sample[:, None] - np.arange(n_in)[None, :])
    w = np.where(x < 1, ((1.5 * x - 2.5) * x) * x + 1, ((-0.5 * x + 2.5) * x - 4) * x + 2)
    w = np.where(x >= 2, 0.0, w)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1), 0.0)
    return np.where(((sample >= -0.5) & (sample <= n_in - 0.5))[:, None], w, 0.0)


def resample_pos_embed(pos: np.ndarray, grid: int) -> np.ndarray:
    """Position embeddings [1, 1 + g*g, D] resampled to [1, 1 + grid*grid, D], the CLS entry kept.

    Numerically `ViT._pos_embed`'s `jax.image.resize(..., "bicubic", antialias=False)` (computed in float64), so
    an oceansar model loaded at a new grid computes what it computed resizing on the fly. timm, DINO and DINOv2
    resize with torch's bicubic (a = -0.75; DINOv2 with an offset and antialiasing): their own resampling of the
    same grid differs slightly from this one.
    """
    g = math.isqrt(pos.shape[1] - 1)
    cls_pos, grid_pos = pos[:, :1], pos[0, 1:].reshape(g, g, -1).astype(np.float64)
    weights = _cubic_weights(g, grid)
    grid_pos = np.einsum("ai,bj,ijd->abd", weights, weights, grid_pos).astype(pos.dtype)
    return np.concatenate([cls_pos, grid_pos.reshape(1, grid * grid, -1)], axis=1)


def _adapt_pos_embed(pos: np.ndarray, want: tuple[int, ...], source: str, where: str) -> tuple[np.ndarray, str]:
    grid, notes = math.isqrt(want[1] - 1), []
    if pos.ndim == 3 and pos.shape[1] > 1 and math.isqrt(pos.shape[1] - 1) ** 2 != pos.shape[1] - 1 \
            and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        # timm's no_embed_class: the CLS token takes no position; a zero CLS entry is the same function.
        pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
        notes.append("the file has no CLS position (timm no_embed_class): added a zero one, the same function")
    g = math.isqrt(pos.shape[1] - 1) if pos.ndim == 3 and pos.shape[1] > 1 else -1
    if g < 1 or g * g != pos.shape[1] - 1:
        raise ValueError(f"{source}: {where} of shape {pos.shape} is not [1, 1 + g*g, D] position embeddings of a "
                         f"square patch grid with one CLS token; our pos_embed needs {want}")
    if g != grid:
        pos = resample_pos_embed(pos, grid)
        notes.append(f"resampled the {g}x{g} position grid to {grid}x{grid} bicubically (jax.image.resize "
                     f"convention, antialias off), CLS entry kept")
    return pos, "; ".join(notes)


def _refuse(name: str, shape: tuple, where: str, source: str, depth: int, file_depth: int) -> str:
    """Why a file tensor with no place in our model cannot be dropped, and what would fix it."""
    head = f"{source}: {where} {shape}"
    if m := re.fullmatch(r"blocks\.(\d+)\.(.*)", name):
        if int(m.group(1)) >= depth:
            return (f"{head}: the file has {file_depth} blocks, this model {depth}: choose a config.model.variant "
                    f"of depth {file_depth}")
        if m.group(2) in ("ls1.gamma", "ls2.gamma"):
            return (f"{head} is a LayerScale vector (arXiv 2103.17239, DINOv2) and this model has none: set "
                    f"config.model.layer_scale > 0 (ViT(layer_scale=...)) to hold it")
    if name == "reg_token":
        return (f"{head}: register tokens (arXiv 2309.16588) take part in every block and our ViT has none; "
                f"load a checkpoint without registers")
    if name == "dist_token":
        return f"{head}: a DeiT distillation token (arXiv 2012.12877) takes part in every block; our ViT has none"
    return (f"{head} has no place in our ViT (not a tensor of timm's plain VisionTransformer, nor a classifier "
            f"head to skip); dropping it would change the function")


def from_timm(state: Mapping[str, Any], like: Mapping, *, source: str = "state dict"
              ) -> tuple[dict, LoadReport]:
    """Our backbone's parameters from a ViT state dict in timm's, DINO's / DINOv2's or transformers' layout.

    The layout is read from the names: timm's `VisionTransformer` (and the original DINO, iBOT and DINOv2
    checkpoints, the same names plus `mask_token` / `masked_embed`, which load into our mask token; `module.`,
    `backbone.`, `model.`, `dinov2.`, `vit.` prefixes and DINOv2's `blocks.<chunk>.<i>` nesting are undone), or
    transformers' `Dinov2Model` / `ViTModel` (`embeddings.*`, `encoder.layer.<i>.*` with query, key and value
    fused into our qkv, `layernorm`). Adaptations, each in `LoadReport.adapted`: input channels by timm's
    `adapt_input_conv` (summed to 1; otherwise repeated cyclically and scaled by in/out), the position grid
    resampled to ours as `resample_pos_embed` does, a missing CLS position (timm's `no_embed_class`) set to zero.
    What the file holds beyond weights is not checked: the head count (ViT-S has 6 in both codebases), the
    LayerNorm epsilon (ours 1e-6, as timm and DINOv2; transformers' `ViTModel` uses 1e-12) and the GELU must match.

    Args:
        state: name -> array (numpy, or anything `np.asarray` takes), e.g. `read_safetensors(path)`.
        like: our backbone's pure dict (`nnx.to_pure_dict(nnx.state(vit, nnx.Param))`, freshly initialised);
            only its structure, shapes and dtypes are read, and its values for what the file lacks.
        source: the file's name, for messages and the report.

    Returns:
        (params, report): a pure dict with `like`'s structure and dtypes (numpy leaves) to load with
        `nnx.replace_by_pure_dict(state, params); nnx.update(vit, state)`, and what was done.

    Raises:
        ValueError: naming `source`, the tensor and what would fix it, when the file lacks one of our tensors
            (other than the mask token), holds one that would change the function and has no place in our model
            (LayerScale without `layer_scale`, register tokens, more blocks) or a shape that differs after
            adaptation (another width, patch size or MLP ratio).
    """
    tensors, origin, layout = _canonical(state, source)
    ours = list(leaves(like))
    depth = len({path[1] for path, _ in ours if path[0] == "blocks"})
    file_depth = len({m.group(1) for n in tensors if (m := re.match(r"blocks\.(\d+)\.", n))})
    values: dict[tuple, Any] = {}
    loaded, created, adapted = [], [], {}
    for path, leaf in ours:
        name, key, want = _timm_name(path), dotted(path), tuple(leaf.shape)
        if name not in tensors:
            if path == ("mask_token",):
                created.append(key)
                values[path] = np.asarray(leaf) if hasattr(leaf, "__array__") else leaf
                continue
            hint = (f"the file has {file_depth} blocks, this model {depth}: choose a config.model.variant of depth "
                    f"{file_depth}" if file_depth < depth and name.startswith("blocks.") else
                    "the file has no LayerScale: set config.model.layer_scale = 0" if name.endswith(".gamma") else
                    "the file has fc_norm (a global-pool model whose final norm follows the pooling)"
                    if name.startswith("norm.") and any(n.startswith("fc_norm.") for n in tensors) else
                    "the file is incomplete or another architecture")
            raise ValueError(f"{source}: no tensor {name} (our {key}, shape {want}); {hint}")
        x = _from_torch(name, as_float32(tensors[name]))
        note = ""
        if path == ("patch_embed", "kernel") and x.ndim == 4 and x.shape[2] != want[2]:
            x, note = adapt_channels(x, want[2])
        elif path == ("pos_embed",) and x.shape != want:
            x, note = _adapt_pos_embed(x, want, source, origin[name])
        elif path == ("mask_token",) and x.shape != want and x.size == math.prod(want):
            note = f"reshaped {x.shape} to {want}"
            x = x.reshape(want)
        if x.shape != want:
            raise ValueError(f"{source}: {origin[name]} has shape {tuple(np.shape(tensors[name]))} "
                             f"({x.shape} in our layout) and our {key} needs {want}: another width, patch size or "
                             f"MLP ratio; choose the file's config.model.variant")
        values[path] = x.astype(np.dtype(leaf.dtype))
        loaded.append(key)
        if note:
            adapted[key] = note
    used = {_timm_name(path) for path, _ in ours}
    skipped = []
    for name in tensors.keys() - used:
        if name.startswith(_HEAD_PREFIXES):
            skipped.append(origin[name])
        else:
            raise ValueError(_refuse(name, tuple(np.shape(tensors[name])), origin[name], source, depth, file_depth))

    def build(tree, path=()):
        return {k: build(v, path + (k,)) if isinstance(v, Mapping) else values[path + (k,)] for k, v in tree.items()}

    report = LoadReport(source=source, layout=layout, loaded=tuple(loaded), adapted=types.MappingProxyType(adapted),
                        skipped=tuple(sorted(skipped)), created=tuple(created))
    return build(like), report


def _read_raw(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file read by its documented layout (u64 header size, JSON header, little-endian bytes), for
    safetensors releases whose numpy API does not know bf16."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file's tensors as numpy arrays, low-precision floats (bf16, fp16, fp8) widened to float32.

    safetensors >= 0.8 returns bf16 as ml_dtypes' `bfloat16`, which most numpy code cannot compute with, and
    older releases refuse it; both are read here and widened, losslessly.
    """
    from safetensors import numpy as st_numpy

    try:
        state = st_numpy.load_file(path)
    except (KeyError, TypeError):  # an older safetensors without bf16 in its numpy API
        state = _read_raw(path)
    return {k: v.astype(np.float32) if v.dtype in _NARROW else v for k, v in state.items()}


def write_safetensors(path: str | os.PathLike, state: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes `state` (name -> array, any dtype incl. bf16) to a safetensors file.

    Args:
        path: the file to write.
        state: e.g. `to_timm(params)`.
        metadata: string pairs for the header; `format: pt` is added unless given, since transformers' loaders
            refuse a file without it and the tensors are in torch layout.
    """
    from safetensors import numpy as st_numpy

    tensors = {k: np.require(np.asarray(v), requirements='C') for k, v in state.items()}  # keeps 0-d tensors 0-d
    st_numpy.save_file(tensors, str(path), metadata={"format": "pt", **dict(metadata or {})})
