"""Our ResNet's weights in timm's (and torchvision's) `resnet50` layout, both ways.

`oceansar.models.resnet` already names its modules as timm does (`conv1`, `bn1`, `layer2.0.downsample.1`), so
the layouts differ only in the leaves: convolution kernels are HWIO here and OIHW in torch, batch norm's
`scale`/`bias`/`mean`/`var` are torch's `weight`/`bias`/`running_mean`/`running_var`, and torch keeps a
`num_batches_tracked` counter per batch norm. `to_timm` writes the state dict that timm's and torchvision's
`resnet50(num_classes=0)` take with a strict `load_state_dict`; `from_timm` fills our parameter and
batch-statistics dict from such a file (the classifier `fc` skipped, the stem convolution adapted to our input
channels as timm's `adapt_input_conv` does, the batch-norm counters skipped) and reports every tensor as
`timm_layout.LoadReport` does. Numpy
only, like `timm_layout`.
"""
from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from oceansar.models.timm_layout import LoadReport, adapt_channels, as_float32, dotted, leaves, strip_prefixes

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_COUNTER = "num_batches_tracked"
_HEAD_PREFIXES = ("fc.", "head.", "classifier.")
_INNER = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1"]
_LEAF_ORDER = ["weight", "bias", "running_mean", "running_var", _COUNTER]


def _timm_name(path: tuple) -> str:
    """timm's name of our tensor at `path` (("layer1", 0, "bn2", "mean") -> "layer1.0.bn2.running_mean")."""
    if not path or str(path[-1]) not in _TORCH_LEAF:
        raise ValueError(f"{dotted(path)}: not a tensor of oceansar's ResNet backbone; pass the backbone's pure "
                         "dict of parameters and batch statistics")
    return ".".join([str(p) for p in path[:-1]] + [_TORCH_LEAF[str(path[-1])]])


def _order(name: str) -> tuple:
    """timm's state-dict order: stem, then the stages' blocks in order, each module's tensors as torch lists them."""
    parts = name.split(".")
    leaf = _LEAF_ORDER.index(parts[-1])
    if not parts[0].startswith("layer"):
        return 0, 0, 0, ["conv1", "bn1"].index(parts[0]), leaf
    return 1, int(parts[0][5:]), int(parts[1]), _INNER.index(".".join(parts[2:-1])), leaf


def to_timm(params: Mapping) -> dict[str, np.ndarray]:
    """Our ResNet's parameters and batch statistics as timm's `ResNet` state dict, in torch layout.

    Every batch norm also gets torch's `num_batches_tracked` counter (0: it only matters with momentum=None), so
    `timm.create_model("resnet50", num_classes=0, in_chans=...)` and torchvision's `resnet50` (its `fc` removed)
    take the result with `strict=True`.

    Args:
        params: the backbone's pure dict, `nnx.to_pure_dict(nnx.state(resnet, (nnx.Param, nnx.BatchStat)))`.

    Returns:
        {timm name: contiguous numpy array}, in timm's order.
    """
    out = {}
    for path, leaf in leaves(params):
        name = _timm_name(path)
        x = np.asarray(leaf)
        out[name] = np.ascontiguousarray(x.transpose(3, 2, 0, 1) if x.ndim == 4 else x)
        if name.endswith(".running_var"):
            out[name[:-len("running_var")] + _COUNTER] = np.zeros((), np.int64)
    return dict(sorted(out.items(), key=lambda item: _order(item[0])))


def from_timm(state: Mapping[str, Any], like: Mapping, *, source: str = "state dict") -> tuple[dict, LoadReport]:
    """Our ResNet's parameters and batch statistics from a timm or torchvision ResNet state dict.

    Args:
        state: name -> array (e.g. `timm_layout.read_safetensors(path)`); `module.`, `backbone.` and `model.`
            prefixes are stripped.
        like: our backbone's pure dict of parameters and batch statistics; only its structure, shapes and dtypes
            are read.
        source: the file's name, for messages and the report.

    Returns:
        (params, report): a pure dict with `like`'s structure and dtypes, and what was done.

    Raises:
        ValueError: naming `source` and the tensor, when the file lacks one of our tensors, holds a block or
            module our variant does not have, or a shape that differs after the channel adaptation.
    """
    tensors, origin, prefixes = {}, {}, set()
    for key, value in state.items():
        name, prefix = strip_prefixes(key)
        prefixes.add(prefix)
        tensors[name], origin[name] = value, key
    ours = list(leaves(like))
    depth = {m.group(0) for path, _ in ours if (m := re.match(r"layer\d\.\d+", ".".join(map(str, path))))}
    file_depth = {m.group(0) for n in tensors if (m := re.match(r"layer\d\.\d+", n))}
    values, loaded, adapted = {}, [], {}
    for path, leaf in ours:
        name, key, want = _timm_name(path), dotted(path), tuple(np.shape(leaf))
        if name not in tensors:
            hint = ("the file holds a ViT (patch embedding and transformer blocks): choose a ViT "
                    "config.model.variant" if any(n.startswith(("patch_embed.", "blocks.")) for n in tensors) else
                    f"the file has {len(file_depth)} blocks, this model {len(depth)}: choose the file's "
                    "config.model.variant" if len(file_depth) != len(depth) else
                    "the file is incomplete or another architecture")
            raise ValueError(f"{source}: no tensor {name} (our {key}, shape {want}); {hint}")
        x = as_float32(tensors[name])
        if x.ndim == 4:
            x = x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if path == ("conv1", "kernel") and x.ndim == 4 and x.shape[2] != want[2]:
            x, adapted[key] = adapt_channels(x, want[2])
        if x.shape != want:
            raise ValueError(f"{source}: {origin[name]} has shape {tuple(np.shape(tensors[name]))} ({x.shape} in "
                             f"our layout) and our {key} needs {want}: another ResNet; choose the file's "
                             "config.model.variant")
        values[path] = x.astype(np.dtype(leaf.dtype))
        loaded.append(key)
    used = {_timm_name(path) for path, _ in ours}
    skipped = []
    for name in sorted(tensors.keys() - used):
        if name.endswith("." + _COUNTER) or name.startswith(_HEAD_PREFIXES):
            skipped.append(origin[name])
        else:
            hint = (f"the file has {len(file_depth)} blocks, this model {len(depth)}: choose the file's "
                    "config.model.variant" if len(file_depth) != len(depth) else
                    "dropping it would change the function")
            raise ValueError(f"{source}: {origin[name]} {tuple(np.shape(tensors[name]))} has no place in our "
                             f"ResNet; {hint}")

    def build(tree, path=()):
        return {k: build(v, path + (k,)) if isinstance(v, Mapping) else values[path + (k,)] for k, v in tree.items()}

    taken = sorted(p for p in prefixes if p)
    layout = "timm/torchvision ResNet" + (f", prefix {', '.join(map(repr, taken))} stripped" if taken else "")
    report = LoadReport(source=source, layout=layout, loaded=tuple(loaded), adapted=types.MappingProxyType(adapted),
                        skipped=tuple(skipped), created=())
    return build(like), report
