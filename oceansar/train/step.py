"""The DINO train step: one pure jitted function `train_step(state, batch)`.

On device, in one program: uint8 -> standardised float, multi-crop augmentation, student forward on
the global and local stacks (two static shapes), teacher forward on the global crops, the weighted
per-sample DINO loss, per-tensor clipped AdamW with the prototype layer frozen at the start, teacher
EMA, centering, and the scatter of the per-sample losses into the loss-statistics table. Schedules
(lr, weight decay, teacher momentum, teacher temperature) are computed here from the step count.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from oceansar import augment
from oceansar.losses import dino
from oceansar.pruning import loss_stats
from oceansar.train import optimizer as optim_lib
from oceansar.train import schedules
from oceansar.train.state import TrainState, last_layer_mask


@dataclasses.dataclass(frozen=True)
class Budget:
    """A config's example budgets turned into step counts for one global batch size."""

    batch_size: int
    total_steps: int
    warmup_steps: int
    freeze_last_layer_steps: int
    teacher_temp_warmup_steps: int

    @classmethod
    def from_config(cls, config) -> "Budget":
        b = config.batch_size
        return cls(
            batch_size=b,
            total_steps=config.total_examples // b,
            warmup_steps=config.optim.warmup_examples // b,
            freeze_last_layer_steps=config.optim.freeze_last_layer_examples // b,
            teacher_temp_warmup_steps=config.dino.teacher_temp_warmup_examples // b)


def multicrop_spec(crops_config) -> augment.MultiCropSpec:
    c = crops_config
    return augment.MultiCropSpec(
        global_size=c.global_size, local_size=c.local_size, n_local=c.n_local,
        n_global=c.n_global, global_scale=tuple(c.global_scale), local_scale=tuple(c.local_scale),
        ratio=tuple(c.ratio), interpolation=c.interpolation, flip_p=c.flip_p, vflip_p=c.vflip_p,
        rot90=c.rot90, jitter_p=c.jitter_p, db_offset=c.db_offset, contrast=tuple(c.contrast),
        blur_p_global=tuple(c.blur_p_global), blur_p_local=c.blur_p_local,
        blur_sigma=tuple(c.blur_sigma))


def standardize(image: jax.Array, *, mean: float, std: float) -> jax.Array:
    """Source pixels (uint8, or float already in [0, 1]) to standardised float32."""
    x = image.astype(jnp.float32)
    if image.dtype == jnp.uint8:
        x = x / 255.0
    return (x - mean) / std


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, config, budget: Budget, *,
                    update_loss_stats: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict, jax.Array]]:
    """The jitted `train_step(state, batch) -> (state, metrics, per_sample_loss)`.

    `batch` holds `image` [B,H,W,C], `sample_id` [B] and `weight` [B], sharded over `data`. The
    state argument is donated. `update_loss_stats=False` leaves the loss table untouched; it exists
    so `benchmarks/pruning_overhead.py` can price the table update against the same step.
    """
    spec = multicrop_spec(config.crops)
    d, o = config.dino, config.optim
    peak_lr = o.base_lr * budget.batch_size / 256.0
    stats_momentum = config.pruning.loss_stats_momentum

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        k_aug, k_drop = jax.random.split(key)
        images = standardize(batch["image"], mean=config.data.mean, std=config.data.std)
        globals_, locals_ = augment.multicrop(k_aug, images, spec)

        lr = schedules.warmup_cosine(step, peak=peak_lr, end=o.min_lr,
                                     warmup_steps=budget.warmup_steps, total_steps=budget.total_steps)
        wd = schedules.cosine(step, start=o.weight_decay, end=o.weight_decay_end,
                              total_steps=budget.total_steps)
        momentum = schedules.cosine(step, start=d.teacher_momentum, end=1.0,
                                    total_steps=budget.total_steps)
        teacher_temp = schedules.linear_warmup(step, start=d.warmup_teacher_temp, end=d.teacher_temp,
                                               warmup_steps=budget.teacher_temp_warmup_steps)

        teacher = nnx.merge(graphdef, state.teacher, rest)
        t_out = teacher(globals_, train=False)
        t_logits = jax.lax.stop_gradient(t_out["logits"])

        def loss_fn(params):
            student = nnx.merge(graphdef, params, rest)
            rngs = nnx.Rngs(dropout=k_drop)
            s_global = student(globals_, train=True, rngs=rngs)["logits"]
            s_local = student(locals_, train=True, rngs=rngs)["logits"]
            per_sample, aux = dino.dino_loss([s_global, s_local], t_logits, state.center,
                                             student_temp=d.student_temp, teacher_temp=teacher_temp)
            loss = jnp.mean(per_sample * batch["weight"])
            return loss, (per_sample, aux)

        (loss, (per_sample, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        frozen = step < budget.freeze_last_layer_steps
        mask = last_layer_mask(grads)
        zero_frozen = lambda t: jax.tree.map(  # noqa: E731
            lambda x, m: jnp.where(frozen & m, jnp.zeros_like(x), x), t, mask)
        grads = zero_frozen(grads)
        opt_state = optim_lib.set_hyperparams(state.opt_state, learning_rate=lr, weight_decay=wd)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, zero_frozen(updates))
        teacher_params = jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s,
                                      state.teacher, params)
        center = dino.update_center(state.center, t_logits, d.center_momentum)
        table = state.loss_stats
        if update_loss_stats:
            table = loss_stats.update(table, batch["sample_id"], per_sample, batch["weight"], step,
                                      momentum=stats_momentum)
        finite = state.finite & jnp.isfinite(loss)

        metrics = {
            "train/loss": loss,
            "train/loss_unweighted": jnp.mean(per_sample),
            "train/lr": lr,
            "train/weight_decay": wd,
            "train/teacher_momentum": momentum,
            "train/teacher_temp": teacher_temp,
            "train/grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
            "train/weight_mean": jnp.mean(batch["weight"]),
        }
        metrics.update({f"train/{k}": v for k, v in aux.items()})
        metrics.update({f"train/{k}": v for k, v in
                        dino.collapse_monitors(t_logits, state.center, teacher_temp).items()})
        new_state = state.replace(step=step + 1, params=params, teacher=teacher_params,
                                  opt_state=opt_state, center=center, loss_stats=table,
                                  finite=finite)
        return new_state, metrics, per_sample

    return jax.jit(train_step, donate_argnums=(0,))


def make_embed_fn(graphdef, rest, config, *, features: str) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted `embed(teacher_params, images) -> [B, D]` on one deterministic centre view.

    `features` is "cls" or "cls+mean_patch" (CLS concatenated with the mean patch token).
    """
    size = config.crops.global_size

    def embed(params, images):
        model = nnx.merge(graphdef, params, rest)
        x = standardize(images, mean=config.data.mean, std=config.data.std)
        x = augment.center_view(x, size)
        out = model.backbone(x, train=False)
        if features == "cls":
            return out["cls"]
        return jnp.concatenate([out["cls"], jnp.mean(out["patch"], axis=1)], axis=-1)

    return jax.jit(embed)
