"""The DINO optimizer: AdamW with weight decay on matrices only and per-tensor gradient clipping.

Learning rate and weight decay are injected hyperparameters, set inside the jitted train step from
the step count (`set_hyperparams`), so the schedules never force a recompile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from oceansar.spec import OptimSpec


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """Rescales each gradient tensor on its own to L2 norm at most `max_norm` (DINO's rule).

    This differs from `optax.clip_by_global_norm`, which scales all tensors by one factor.
    """

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            return (g * jnp.minimum(1.0, max_norm / (norm + 1e-6))).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _decay_mask(params):
    # Biases, LayerNorm scales and the weight-norm gain are not decayed (DINO: ndim >= 2 only).
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_config: OptimSpec) -> optax.GradientTransformation:
    """AdamW with injectable `learning_rate` and `weight_decay`, clipped per tensor first."""

    def adamw(learning_rate, weight_decay):
        parts = []
        if optim_config.clip_grad > 0:
            parts.append(clip_per_tensor(optim_config.clip_grad))
        parts += [
            optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=1e-8),
            optax.add_decayed_weights(weight_decay, mask=_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        ]
        return optax.chain(*parts)

    return optax.inject_hyperparams(adamw)(learning_rate=0.0, weight_decay=0.0)


def set_hyperparams(opt_state, **values):
    """A copy of an `inject_hyperparams` state with some hyperparameters replaced."""
    hyper = dict(opt_state.hyperparams)
    for k, v in values.items():
        hyper[k] = jnp.asarray(v, dtype=jnp.asarray(hyper[k]).dtype)
    return opt_state._replace(hyperparams=hyper)
