"""Schedules as pure functions of the global step, evaluated inside the jitted train step.

Budgets are in examples seen, never epochs: pruning changes the epoch length, so every schedule is
a function of `step * global_batch_size` against a budget fixed in the config. That makes a pruned
and a full run comparable at equal compute.
"""
from __future__ import annotations

import jax.numpy as jnp


def warmup_cosine(step, *, peak: float, end: float, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine to `end` at `total_steps`.

    DINO's learning-rate schedule (arXiv 2104.14294), written per step.
    """
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / jnp.maximum(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / jnp.maximum(total_steps - warmup_steps, 1), 0.0, 1.0)
    cos = end + 0.5 * (peak - end) * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cos)


def cosine(step, *, start: float, end: float, total_steps: int):
    """Cosine from `start` to `end` over `total_steps` (DINO's weight decay and teacher momentum)."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(total_steps, 1), 0.0, 1.0)
    return end + 0.5 * (start - end) * (1.0 + jnp.cos(jnp.pi * progress))


def linear_warmup(step, *, start: float, end: float, warmup_steps: int):
    """Linear from `start` to `end` over `warmup_steps`, then constant (teacher temperature)."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(warmup_steps, 1), 0.0, 1.0)
    return start + (end - start) * progress


def wsd(step, *, start: float, peak: float, end: float, warmup_steps: int, decay_steps: int,
        total_steps: int, shape: str = "cosine"):
    """Warmup-stable-decay (MiniCPM, arXiv 2404.06395): linear warm-up, flat, then decay to `end`.

    The stable phase does not depend on the epoch length, which suits dynamic pruning: only the
    decay start is fixed, by the compute budget.
    """
    step = jnp.asarray(step, jnp.float32)
    warm = start + (peak - start) * step / jnp.maximum(warmup_steps, 1)
    p = jnp.clip((step - (total_steps - decay_steps)) / jnp.maximum(decay_steps, 1), 0.0, 1.0)
    if shape == "cosine":
        g = 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    elif shape == "linear":
        g = 1.0 - p
    elif shape == "1-sqrt":
        g = 1.0 - jnp.sqrt(p)
    else:
        raise ValueError(f"wsd: unknown decay shape {shape!r}; known: cosine, linear, 1-sqrt")
    decay = end + (peak - end) * g
    return jnp.where(step < warmup_steps, warm, decay)
