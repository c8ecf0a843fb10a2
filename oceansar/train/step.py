"""The DINO train step: one pure function `train_step(state, batch)`, jitted once by the Experiment.

On device, in one program: uint8 -> standardised float, multi-crop augmentation, student forward on
the global and local stacks (two static shapes), teacher forward on the global crops, the weighted
per-sample DINO loss, per-tensor clipped AdamW with the prototype layer frozen at the start, teacher
EMA, centering, and the scatter of the per-sample losses into the loss-statistics table. Schedules
(lr, weight decay, teacher momentum, teacher temperature) are computed here from the step count.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from oceansar import augment
from oceansar.losses import dino
from oceansar.pruning import loss_stats
from oceansar.spec import RunSpec
from oceansar.train import optimizer as optim_lib
from oceansar.train import schedules
from oceansar.train.state import TrainState, last_layer_mask


@dataclasses.dataclass(frozen=True)
class Budget:
    """A run's example budgets turned into step counts for one global batch size."""

    batch_size: int
    total_steps: int
    warmup_steps: int
    freeze_last_layer_steps: int
    teacher_temp_warmup_steps: int

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "Budget":
        b = spec.batch_size
        return cls(
            batch_size=b,
            total_steps=spec.total_examples // b,
            warmup_steps=spec.optim.warmup_examples // b,
            freeze_last_layer_steps=spec.optim.freeze_last_layer_examples // b,
            teacher_temp_warmup_steps=spec.dino.teacher_temp_warmup_examples // b)


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, run: RunSpec, budget: Budget, *,
                    update_loss_stats: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict, jax.Array]]:
    """The pure `train_step(state, batch) -> (state, metrics, per_sample_loss)`, to be jitted by the caller.

    `batch` holds `image` [B,H,W,C], `sample_id` [B] and `weight` [B], sharded over `data`.
    `update_loss_stats=False` leaves the loss table untouched; it exists so
    `benchmarks/pruning_overhead.py` can price the table update against the same step.
    """
    spec, d, o = run.crops, run.dino, run.optim
    peak_lr = o.base_lr * budget.batch_size / 256.0
    stats_momentum = run.pruning.loss_stats_momentum

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        k_aug, k_drop = jax.random.split(key)
        images = augment.standardize(batch["image"], mean=run.data.mean, std=run.data.std)
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

    return train_step
