"""The image-text train step: WFA caption aggregation and a contrastive loss, one pure function, jitted once.

On device, in one program: uint8 -> standardised float; one random-resized crop per image (no flips and no
rotations: captions say "on the left", "wind from the north-west"); the image tower on the crops; the image's
distinct captions (exact duplicates were folded by the source) packed into a flat [C, L] buffer
(`aggregation.pack_captions`, C = `text.capacity` x B, so the text tower runs on distinct captions only; `single`
packs the one caption it draws per image, C = B) and encoded; the WFA aggregation (`single`, `mean`, `bleu`,
`attention`: arXiv 2505.11121) into one text feature per image; symmetric InfoNCE (CLIP, arXiv 2103.00020) or the
sigmoid loss (SigLIP, arXiv 2303.15343) over the global batch, weighted per sample, plus (`text.caption_loss`)
every encoded caption as its own text-to-image query, each original caption alike
(`contrastive.caption_to_image_loss`: the benchmarks query one caption at a time, and the aggregate alone trains one
target per image); AdamW at the scheduled lr and weight decay (the image tower untouched under
`text.lock_image`, LiT, arXiv 2111.07991); the teacher is a copy of the student (no EMA: what evaluation,
embedding and the release read are the trained weights); the per-sample losses into the loss-statistics table, so
every pruning policy works for image-text runs too.
Metrics count the text tokens the tower ran against those of every original caption: the compute folding saves.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from oceansar import augment
from oceansar.losses import contrastive
from oceansar.models import aggregation
from oceansar.pruning import loss_stats
from oceansar.spec import RunSpec
from oceansar.train.state import TrainState
from oceansar.train.step import apply_gradients, scheduled  # one schedule and one update for both objectives

# Batch fields of an image-text run, besides image, sample_id and weight (`oceansar.data.captioned`).
CAPTION_FIELDS = ("caption_ids", "caption_valid", "caption_count", "caption_weights", "caption_tokens")


def capacity(run: RunSpec) -> int:
    """Rows of the flat caption buffer the text tower encodes per step: B for `single`, else text.capacity x B."""
    b, t = run.batch_size, run.text
    if t.aggregation == "single":
        return b
    return max(b, min(round(t.capacity * b), b * t.max_captions))


def _image_view(run: RunSpec):
    """One random-resized crop per image, geometry kept (captions name directions), blurred as DINO's first
    global crop."""
    return dataclasses.replace(run.crops, n_global=1, n_local=0, flip_p=0.0, vflip_p=0.0, rot90=False,
                               blur_p_global=run.crops.blur_p_global[:1])


def _locked(grads, lock_image: bool):
    """The gradients with the image tower's zeroed under LiT (its optimizer state then never moves it)."""
    if not lock_image:
        return grads

    def zero(path, g):
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return jnp.zeros_like(g) if keys and keys[0] in ("backbone", "image_proj") else g
    return jax.tree_util.tree_map_with_path(zero, grads)


def _text_features(model, batch, key, run: RunSpec):
    """The aggregated text feature of every image [B, D], the caption features [B, m, D], the aggregation
    weights [B, m], the encoded rows [B, m] bool, and token counts."""
    t = run.text
    ids, valid, count = batch["caption_ids"], batch["caption_valid"], batch["caption_count"]
    b, m, _ = ids.shape
    weights_in = batch["caption_weights"]
    if t.aggregation == "single":  # draw first, encode only the drawn caption of each image
        valid = aggregation.single_weights(key, valid, count) > 0
    priority = (aggregation.mean_weights(valid, count) if t.aggregation in ("single", "mean", "attention")
                else aggregation.bleu_weights(aggregation.caption_mask(valid, count), weights_in))
    flat_ids, slot, overflow = aggregation.pack_captions(ids, valid, capacity(run), priority=priority)
    feats = aggregation.unpack_features(model.encode_text(flat_ids), slot, b, m)
    kept = valid & (slot >= 0)
    if t.aggregation == "single":
        w = kept.astype(jnp.float32)
        text = aggregation.aggregate(feats, w)
    else:
        text, w = model.aggregator(feats, kept, count, weights_in)
    tokens = {"text_tokens_encoded": jnp.sum(flat_ids != 0),
              "text_tokens_all_captions": jnp.sum(batch["caption_tokens"]),
              "captions_dropped": overflow}
    return text, feats, w, kept, tokens


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, run: RunSpec, budget, *,
                    update_loss_stats: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict, jax.Array]]:
    """The pure `train_step(state, batch) -> (state, metrics, per_sample_loss)` of an image-text run.

    `batch` holds `image` [B,H,W,C], `sample_id` [B], `weight` [B] and the `CAPTION_FIELDS`, sharded over `data`.
    """
    view, t = _image_view(run), run.text

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        step = state.step
        key = jax.random.fold_in(state.rng, step)
        k_aug, k_drop, k_caption = jax.random.split(key, 3)
        images = augment.standardize(batch["image"], mean=run.data.mean, std=run.data.std)
        crops = augment.multicrop(k_aug, images, view)[0][0]
        sched = scheduled(step, run, budget)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            image = model.encode_image(crops, train=True, rngs=nnx.Rngs(dropout=k_drop))
            text, feats, w, kept, tokens = _text_features(model, batch, k_caption, run)
            if t.loss == "siglip":
                loss, per_sample, aux = contrastive.siglip_loss(image, text, model.log_scale[...], model.bias[...],
                                                                weights=batch["weight"])
            else:
                loss, per_sample, aux = contrastive.clip_loss(image, text, model.log_scale[...],
                                                              weights=batch["weight"])
            if t.caption_loss > 0:
                # Every original caption a query alike, as in retrieval, whatever the aggregate's weights: with
                # them, BLEU's (an image's largest 0.49 on average) left most captions untrained as queries, and
                # attention learned to rest on the caption easiest to match (weight entropy 1.55 -> 0.44).
                per_caption, caption_aux = contrastive.caption_to_image_loss(
                    image, feats, aggregation.mean_weights(kept, batch["caption_count"]), model.log_scale[...],
                    model.bias[...] if t.loss == "siglip" else None)
                per_sample = per_sample + t.caption_loss * per_caption
                loss = jnp.mean(per_sample * batch["weight"])
                aux = aux | caption_aux
            entropy = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.maximum(w, 1e-12)), 0.0), axis=-1)
            aux = aux | tokens | {"caption_weight_entropy": jnp.mean(entropy)}
            return loss, (per_sample, aux)

        (loss, (per_sample, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = _locked(grads, t.lock_image)
        grads, params, opt_state = apply_gradients(state, grads, tx, sched, frozen=jnp.zeros((), bool))
        teacher = jax.tree.map(jnp.copy, params)  # the evaluated and embedding weights are the trained ones
        table = state.loss_stats
        if update_loss_stats:
            table = loss_stats.update(table, batch["sample_id"], per_sample, batch["weight"], step,
                                      momentum=run.pruning.loss_stats_momentum)
        metrics = {
            "train/loss": loss,
            "train/loss_unweighted": jnp.mean(per_sample),
            "train/lr": sched["lr"], "train/weight_decay": sched["weight_decay"],
            "train/grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
            "train/weight_mean": jnp.mean(batch["weight"]),
            **{f"train/{k}": v for k, v in aux.items()},
        }
        new_state = state.replace(step=step + 1, params=params, teacher=teacher, opt_state=opt_state,
                                  loss_stats=table, finite=state.finite & jnp.isfinite(loss))
        return new_state, metrics, per_sample

    return train_step
