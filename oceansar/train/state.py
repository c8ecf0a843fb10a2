"""The train state: student and teacher parameters, optimizer state, DINO and iBOT centres, loss statistics.

The model is DINO's (backbone + heads) or, for an image-text run, the image-text model (both towers); the state
has the same fields either way (an image-text run's centres stay zero and its teacher is a copy of the student).

A ResNet's batch-norm running statistics travel in the same trees as the parameters (`STATE_VARIABLES`): they
take no gradient, and the step overwrites them with the ones its own forward passes computed.

Everything is one pytree (`TrainState`) so that the jitted step donates it whole, Orbax saves it
whole, and sharding rules apply to it whole (replicated over the `data` axis). The NNX graph
definition is split off once here and closed over by the step: no Python graph traversal per step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from oceansar.models.dino_head import DINOModel
from oceansar.models.image_text import ImageTextModel
from oceansar.pruning import loss_stats
from oceansar.spec import RunSpec


# The variables a train state carries per network: parameters and batch-norm running statistics (a ResNet's).
# They travel together (one tree per network: checkpoints, shardings, the teacher's EMA, releases), and the step
# replaces the statistics by the ones its forward passes computed (`train.step.with_batch_stats`).
STATE_VARIABLES = (nnx.Param, nnx.BatchStat)


class TrainState(struct.PyTreeNode):
    step: jax.Array          # int32: optimizer steps taken
    params: Any              # student nnx.State (Params, and a ResNet's batch-norm statistics)
    teacher: Any             # teacher nnx.State, EMA of the student's Params (its batch statistics its own)
    opt_state: optax.OptState
    center: jax.Array        # [K] EMA of the teacher CLS logits
    center_patch: jax.Array  # [K_patch] EMA of the teacher patch logits (iBOT's center2)
    loss_stats: dict         # per-sample loss statistics (oceansar.pruning.loss_stats)
    rng: jax.Array           # raw uint32 key; per-step keys are fold_in(rng, step)
    finite: jax.Array        # bool: every loss so far was finite


def build_model(run: RunSpec) -> DINOModel | ImageTextModel:
    """The student/teacher architecture of a run, initialised from its seed: the image-text model when
    `config.text.enabled`, else the DINO model (a separate iBOT patch head only when the iBOT term is on and asks
    for it)."""
    model, ibot, text = run.model, run.ibot, run.text
    if text.enabled:
        return ImageTextModel(
            model.variant, img_size=run.crops.global_size, in_channels=model.in_channels, text_size=text.size,
            vocab_size=text.vocab_size, context_length=text.context_length, embed_dim=text.embed_dim,
            aggregation=text.aggregation, loss=text.loss, drop_path_rate=model.drop_path_rate,
            layer_scale=model.layer_scale, remat=model.remat, attention=model.attention, dtype=jnp.dtype(model.dtype),
            rngs=nnx.Rngs(run.seed))
    return DINOModel(
        model.variant, img_size=run.crops.global_size, in_channels=model.in_channels, out_dim=model.out_dim,
        hidden_dim=model.hidden_dim, bottleneck_dim=model.bottleneck_dim,
        norm_last_layer=model.norm_last_layer, drop_path_rate=model.drop_path_rate, layer_scale=model.layer_scale,
        remat=model.remat, attention=model.attention,
        patch_out_dim=run.patch_prototypes if ibot.enabled and ibot.separate_head else 0,
        dtype=jnp.dtype(model.dtype), rngs=nnx.Rngs(run.seed))


def init_state(run: RunSpec, *, num_samples: int, tx: optax.GradientTransformation):
    """Builds the model and its initial TrainState.

    Returns:
      (graphdef, rest, state): `graphdef` and `rest` (any other variables, static: none in our models) rebuild
      the module with `nnx.merge(graphdef, params, rest)`.
    """
    model = build_model(run)
    graphdef, params, rest = nnx.split(model, STATE_VARIABLES, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        teacher=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        center=jnp.zeros((run.model.out_dim,), jnp.float32),
        center_patch=jnp.zeros((run.patch_prototypes,), jnp.float32),
        loss_stats=loss_stats.init(num_samples),
        rng=jax.random.PRNGKey(run.seed + 1),
        finite=jnp.ones((), jnp.bool_),
    )
    return graphdef, rest, state


def last_layer_mask(params) -> Any:
    """True for the heads' prototype layers (`head.last_layer`, `ibot_head.last_layer`), frozen at the start."""
    def is_last(path, _):
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return ("head" in keys or "ibot_head" in keys) and "last_layer" in keys
    return jax.tree_util.tree_map_with_path(is_last, params)

