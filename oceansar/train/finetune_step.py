"""Supervised fine-tuning: the optimizer with layer-wise learning-rate decay, the train step and the prediction.

Full fine-tuning follows BEiT's recipe (arXiv 2106.08254, as MAE and DINOv2 fine-tune): AdamW with a warm-up and a
cosine decay, and the update of the layers near the input scaled down geometrically, block i of d by
`layer_decay ** (d - i)`, the patch embedding, CLS and position embeddings by `layer_decay ** (d + 1)`, the head and
the final norm by 1. Linear probing freezes the backbone: the head alone is optimised and the step never builds the
backbone's backward pass. Classification minimises label-smoothed cross-entropy; regression the mean squared error
of the standardised targets. Each step's randomness (flips, stochastic depth) is `fold_in(rng, step)`, so a resumed
run draws what the uninterrupted one drew.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from oceansar import augment
from oceansar.spec import FinetuneSpec
from oceansar.train.schedules import warmup_cosine
from oceansar.train.step import with_batch_stats


class FinetuneState(struct.PyTreeNode):
    step: jax.Array          # int32: optimizer steps taken
    params: Any              # the Classifier's nnx.State (Params, and a ResNet's batch statistics)
    opt_state: optax.OptState
    rng: jax.Array           # raw uint32 key; per-step keys are fold_in(rng, step)


def _layer(path, depth: int, stage_blocks: tuple[int, ...]) -> int:
    """The layer id of a parameter: 0 for the embeddings (a ResNet's stem), i + 1 for block i (a ResNet's blocks
    counted across its stages), depth + 1 for the final norm and the head."""
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    if keys[0] != "backbone":
        return depth + 1
    if keys[1] == "blocks":
        return int(keys[2]) + 1
    if keys[1].startswith("layer") and stage_blocks:
        return sum(stage_blocks[:int(keys[1][5:]) - 1]) + int(keys[2]) + 1
    return depth + 1 if keys[1] == "norm" else 0


def layer_scales(params, *, depth: int, decay: float, stage_blocks: tuple[int, ...] = ()):
    """Per-parameter multipliers of the update: `decay ** (depth + 1 - layer)` (see the module docstring);
    `stage_blocks`: a ResNet's blocks per stage."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: decay ** (depth + 1 - _layer(p, depth, stage_blocks)), params)


def _trainable(params, linear: bool):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "train" if not linear or str(getattr(p[0], "key", p[0])) == "head" else "frozen", params)


def _decayed(params):
    """Weight decay on the linear and convolution kernels only (not on biases, norms, tokens and positions)."""
    def is_kernel(path, x):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return x.ndim >= 2 and "kernel" in names
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(spec: FinetuneSpec, params, *, depth: int, steps_per_epoch: int, stage_blocks: tuple[int, ...] = ()
                   ) -> tuple[optax.GradientTransformation, Callable]:
    """(tx, schedule): AdamW under a warm-up + cosine schedule, layer-wise decayed; the backbone frozen when linear.

    Args:
      spec: the fine-tuning spec.
      params: the Classifier's parameters (their structure labels the groups).
      depth: the backbone's block count.
      steps_per_epoch: steps of one pass over the training split.
      stage_blocks: a ResNet's blocks per stage (its layer ids count blocks across stages).
    """
    schedule = lambda step: warmup_cosine(step, peak=spec.lr, end=spec.min_lr,  # noqa: E731
                                          warmup_steps=spec.warmup_epochs * steps_per_epoch,
                                          total_steps=spec.epochs * steps_per_epoch)
    adamw = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=spec.weight_decay, mask=_decayed(params))
    if spec.mode == "linear":  # the head alone: its scale is 1
        return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, _trainable(params, True)), \
            schedule
    scales = layer_scales(params, depth=depth, decay=spec.layer_decay, stage_blocks=stage_blocks)
    return optax.chain(adamw, optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, scales))), \
        schedule


def _view(images: jax.Array, *, mean: float, std: float, img_size: int) -> jax.Array:
    return augment.center_view(augment.standardize(images, mean=mean, std=std), img_size)


def loss_fn(outputs: jax.Array, batch: dict[str, jax.Array], spec: FinetuneSpec) -> jax.Array:
    """The batch's mean loss: smoothed cross-entropy on `label`, or MSE on the standardised `targets`."""
    if spec.task == "classification":
        k = outputs.shape[-1]
        onehot = jax.nn.one_hot(batch["label"], k) * (1 - spec.label_smoothing) + spec.label_smoothing / k
        return optax.softmax_cross_entropy(outputs, onehot).mean()
    return jnp.mean(jnp.square(outputs - batch["targets"]))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: Callable,
                    spec: FinetuneSpec, *, mean: float, std: float, img_size: int):
    """`step(state, batch) -> (state, metrics)`, to jit with the state donated.

    `batch`: "image" uint8 [B, H, W, C] and "label" int32 [B] (classification) or "targets" float32 [B, T]
    (standardised).
    """
    linear = spec.mode == "linear"

    def step(state: FinetuneState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(state.rng, state.step)
        k_flip, k_drop = jax.random.split(key)
        x = _view(batch["image"], mean=mean, std=std, img_size=img_size)
        if spec.flips:
            flip = jax.random.bernoulli(k_flip, 0.5, (2, x.shape[0]))[:, :, None, None, None]
            x = jnp.where(flip[0], x[:, :, ::-1], x)
            x = jnp.where(flip[1], x[:, ::-1], x)

        def objective(params):
            model = nnx.merge(graphdef, params)
            outputs = model(x, train=not linear, rngs=nnx.Rngs(dropout=k_drop), frozen=linear)
            return loss_fn(outputs, batch, spec), nnx.state(model, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # A ResNet fine-tuned in full keeps the batch statistics its forward pass computed (they take no gradient).
        params = with_batch_stats(optax.apply_updates(state.params, updates), stats)
        metrics = {"train/loss": loss, "train/lr": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_predict(graphdef: nnx.GraphDef, *, mean: float, std: float, img_size: int):
    """`predict(params, images uint8 [B, H, W, C]) -> [B, outputs]` on the centre view, jitted."""
    @jax.jit
    def predict(params, images):
        return nnx.merge(graphdef, params)(_view(images, mean=mean, std=std, img_size=img_size))
    return predict
