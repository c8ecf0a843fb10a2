"""The train step: one pure function `train_step(state, batch)`, jitted once by the Experiment.

On device, in one program: uint8 -> standardised float, multi-crop augmentation, iBOT block masks for the
student's global crops (when `config.ibot.weight` > 0), student forward on the global and local stacks (two static
shapes), teacher forward on the unmasked global crops, the teacher's targets (EMA centring or Sinkhorn-Knopp), the
weighted per-sample objective (DINO's CLS loss + iBOT's masked-patch loss per image) plus KoLeo, per-tensor clipped
AdamW with the prototype layers frozen at the start, teacher EMA, centres, and the scatter of the per-sample losses
into the loss-statistics table. A ResNet's batch norm normalises the student's crops and the teacher's by their own
batch statistics (the global batch's under sharding), and each network keeps the running statistics its forward
passes computed. Schedules (lr, weight decay, teacher momentum: cosine or WSD; teacher temperatures)
are computed here from the step count. With iBOT and KoLeo off this is DINO's step (arXiv 2104.14294); with both on
it is DINOv2's objective (arXiv 2304.07193).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from oceansar import augment, masking
from oceansar.losses import centering, dino, ibot, koleo
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
    decay_steps: int           # the WSD schedules' decay phase

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "Budget":
        b = spec.batch_size
        return cls(
            batch_size=b,
            total_steps=spec.total_examples // b,
            warmup_steps=spec.optim.warmup_examples // b,
            freeze_last_layer_steps=spec.optim.freeze_last_layer_examples // b,
            teacher_temp_warmup_steps=spec.dino.teacher_temp_warmup_examples // b,
            decay_steps=max(1, round(spec.schedules.decay_fraction * (spec.total_examples // b))))


def scheduled(step, run: RunSpec, budget: Budget) -> dict[str, jax.Array]:
    """Learning rate, weight decay, teacher momentum and the CLS / patch teacher temperatures at `step`.

    Each of the first three follows `config.schedules`: DINO's cosine, or WSD (the lr warms up from 0 to its peak,
    weight decay and momentum hold their start value, and all move to their end value over the last
    `decay_steps`: lr to min_lr, weight decay to weight_decay_end, momentum to 1).
    """
    o, d, s = run.optim, run.dino, run.schedules
    peak_lr = o.base_lr * budget.batch_size / 256.0
    total = budget.total_steps
    wsd = functools.partial(schedules.wsd, decay_steps=budget.decay_steps, total_steps=total, shape=s.decay_shape)
    if s.lr == "wsd":
        lr = wsd(step, start=0.0, peak=peak_lr, end=o.min_lr, warmup_steps=budget.warmup_steps)
    else:
        lr = schedules.warmup_cosine(step, peak=peak_lr, end=o.min_lr, warmup_steps=budget.warmup_steps,
                                     total_steps=total)
    if s.weight_decay == "wsd":
        wd = wsd(step, start=o.weight_decay, peak=o.weight_decay, end=o.weight_decay_end, warmup_steps=0)
    else:
        wd = schedules.cosine(step, start=o.weight_decay, end=o.weight_decay_end, total_steps=total)
    if s.teacher_momentum == "wsd":
        momentum = wsd(step, start=d.teacher_momentum, peak=d.teacher_momentum, end=1.0, warmup_steps=0)
    else:
        momentum = schedules.cosine(step, start=d.teacher_momentum, end=1.0, total_steps=total)
    warm = functools.partial(schedules.linear_warmup, step, warmup_steps=budget.teacher_temp_warmup_steps)
    return {"lr": lr, "weight_decay": wd, "teacher_momentum": momentum,
            "teacher_temp": warm(start=d.warmup_teacher_temp, end=d.teacher_temp),
            "teacher_patch_temp": warm(start=run.ibot.warmup_teacher_temp, end=run.ibot.teacher_temp)}


def _targets(d, logits: jax.Array, center: jax.Array, temp, valid: jax.Array | None = None) -> jax.Array:
    """The teacher's target distributions under `config.dino.centering` (`d`, the DinoSpec)."""
    if d.centering == "sinkhorn_knopp":
        return centering.sinkhorn_knopp(logits, temp, valid=valid, iterations=d.sinkhorn_iterations)
    return centering.teacher_probs(logits, center, temp)


def ema(momentum, teacher: jax.Array, student: jax.Array) -> jax.Array:
    """One teacher tensor's EMA update towards the student's."""
    return momentum * teacher + (1.0 - momentum) * student


def with_batch_stats(params, stats):
    """`params` (an nnx.State of parameters and batch statistics) with its batch statistics replaced by `stats`, the
    ones a forward pass left in the module (`nnx.state(module, nnx.BatchStat)`); a ViT has none."""
    return nnx.merge_state(params, stats) if jax.tree.leaves(stats) else params


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, sched: dict[str, jax.Array], *,
                     frozen: jax.Array):
    """AdamW at the scheduled lr and weight decay, the prototype layers untouched while `frozen`.

    Returns the gradients as applied (frozen ones zeroed), the new parameters and the new optimizer state.
    """
    mask = last_layer_mask(grads)
    zero_frozen = lambda t: jax.tree.map(  # noqa: E731
        lambda x, m: jnp.where(frozen & m, jnp.zeros_like(x), x), t, mask)
    grads = zero_frozen(grads)
    opt_state = optim_lib.set_hyperparams(state.opt_state, learning_rate=sched["lr"],
                                          weight_decay=sched["weight_decay"])
    updates, opt_state = tx.update(grads, opt_state, state.params)
    return grads, optax.apply_updates(state.params, zero_frozen(updates)), opt_state


# One closure on purpose: the whole step is one traced program (augmentation, both networks, the objective, the
# update, EMA and the loss table), and helpers for its parts would each take a dozen of its locals.
def make_train_step(graphdef, rest, tx: optax.GradientTransformation, run: RunSpec, budget: Budget, *,
                    update_loss_stats: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict, jax.Array]]:
    """The pure `train_step(state, batch) -> (state, metrics, per_sample_loss)`, to be jitted by the caller.

    `batch` holds `image` [B,H,W,C], `sample_id` [B] and `weight` [B], sharded over `data`.
    `update_loss_stats=False` leaves the loss table untouched; it exists so
    `benchmarks/pruning_overhead.py` can price the table update against the same step.
    """
    spec, d, ib = run.crops, run.dino, run.ibot
    grid = spec.global_size // run.model.patch

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        k_aug, k_drop, k_mask = jax.random.split(key, 3)
        images = augment.standardize(batch["image"], mean=run.data.mean, std=run.data.std)
        globals_, locals_ = augment.multicrop(k_aug, images, spec)
        sched = scheduled(step, run, budget)
        masks = positions = valid = None
        if ib.enabled:  # the student's global crops, iBOT's block masks; the head sees run.patch_tokens of each
            masks = masking.block_masks(k_mask, globals_.shape[:2], (grid, grid), probability=ib.mask_probability,
                                        ratio=ib.mask_ratio)
            positions, valid = masking.masked_positions(masks, run.patch_tokens)

        teacher = nnx.merge(graphdef, state.teacher, rest)
        # A ResNet teacher normalises by its batch's statistics and keeps its own running ones, as DINO's teacher
        # (in train mode, its buffers outside the EMA).
        t_out = jax.lax.stop_gradient(teacher(globals_, train=False, patch_positions=positions,
                                              use_running_average=False))
        teacher_stats = nnx.state(teacher, nnx.BatchStat)
        t_p = _targets(d, t_out["logits"], state.center, sched["teacher_temp"])
        if ib.enabled:
            t_patch_p = _targets(d, t_out["patch_logits"], state.center_patch, sched["teacher_patch_temp"], valid)

        def loss_fn(params):
            student = nnx.merge(graphdef, params, rest)
            rngs = nnx.Rngs(dropout=k_drop)
            s_global = student(globals_, train=True, rngs=rngs, masks=masks, patch_positions=positions)
            s_local = student(locals_, train=True, rngs=rngs)["logits"]
            per_sample, aux = dino.dino_loss([s_global["logits"], s_local], t_p, student_temp=d.student_temp)
            if ib.enabled:
                patch, patch_aux = ibot.patch_loss(s_global["patch_logits"], t_patch_p, valid,
                                                   student_temp=ib.student_temp)
                aux |= {"ibot/" + k: v for k, v in patch_aux.items()}
                aux["dino_loss"], aux["ibot_loss"] = jnp.mean(per_sample), jnp.mean(patch)
                per_sample = per_sample + ib.weight * patch
            loss = jnp.mean(per_sample * batch["weight"])
            if d.koleo_weight:
                aux["koleo"] = koleo.koleo_loss(s_global["cls"])
                loss = loss + d.koleo_weight * aux["koleo"]
            return loss, (per_sample, aux, nnx.state(student, nnx.BatchStat))

        (loss, (per_sample, aux, student_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads, params, opt_state = apply_gradients(state, grads, tx, sched,
                                                    frozen=step < budget.freeze_last_layer_steps)
        # Batch statistics take no gradient (their updates are zero); each network keeps the ones it computed.
        params = with_batch_stats(params, student_stats)
        teacher_params = with_batch_stats(
            jax.tree.map(functools.partial(ema, sched["teacher_momentum"]), state.teacher, params), teacher_stats)
        center, center_patch = state.center, state.center_patch
        if d.centering == "ema":  # Sinkhorn-Knopp keeps no centre
            center = centering.update_center(center, t_out["logits"], d.center_momentum)
            center_patch = centering.update_center(center_patch, t_out["patch_logits"], ib.center_momentum) \
                if ib.enabled else center_patch
        table = state.loss_stats
        if update_loss_stats:
            table = loss_stats.update(table, batch["sample_id"], per_sample, batch["weight"], step,
                                      momentum=run.pruning.loss_stats_momentum)
        finite = state.finite & jnp.isfinite(loss)

        metrics = {
            "train/loss": loss,
            "train/loss_unweighted": jnp.mean(per_sample),
            **{f"train/{k}": v for k, v in sched.items() if k != "teacher_patch_temp" or ib.enabled},
            "train/grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
            "train/weight_mean": jnp.mean(batch["weight"]),
            **{f"train/{k}": v for k, v in aux.items()},
            **{f"train/{k}": v for k, v in dino.collapse_monitors(t_p).items()},
        }
        if ib.enabled:
            metrics |= {f"train/ibot/{k}": v for k, v in dino.collapse_monitors(t_patch_p, valid=valid).items()}
            metrics["train/ibot/masked_fraction"] = jnp.mean(masks)
        new_state = state.replace(step=step + 1, params=params, teacher=teacher_params,
                                  opt_state=opt_state, center=center, center_patch=center_patch,
                                  loss_stats=table, finite=finite)
        return new_state, metrics, per_sample

    return train_step
