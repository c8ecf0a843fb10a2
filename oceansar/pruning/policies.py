"""Pruning policies: (epoch, training signals) -> the epoch's Selection.

A policy is called at the start of every epoch by the training loop. Its output is deterministic
given (seed, epoch) and the signals it reads, so a run resumed mid-way re-derives nothing: the
loop stores the current Selection in the checkpoint and calls the policy again only at the next
epoch boundary.
"""
from __future__ import annotations

import numpy as np

from oceansar.data.selection import Selection

POLICIES = ("none", "random", "static")


class FullData:
    """Every sample every epoch, weight 1 (the baseline)."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def select(self, epoch: int) -> Selection:
        del epoch
        return Selection.full(self.num_samples)


class RandomSubset:
    """A uniform random fraction `rho` of the pool, redrawn every epoch (the random baseline)."""

    def __init__(self, num_samples: int, *, rho: float, seed: int):
        self.num_samples, self.rho, self.seed = num_samples, rho, seed

    def select(self, epoch: int) -> Selection:
        rng = np.random.default_rng([self.seed, epoch, 0x5E1])
        n_keep = max(1, int(round(self.rho * self.num_samples)))
        return Selection.subset(np.sort(rng.choice(self.num_samples, n_keep, replace=False)))


class StaticSubset:
    """A subset curated offline (`launch.py --mode=curate`), visited whole every epoch."""

    def __init__(self, path: str, *, num_samples: int):
        from oceansar.curate import load_static_selection  # jax-side module; keep policies light

        self.selection = load_static_selection(path, num_samples=num_samples)

    def select(self, epoch: int) -> Selection:
        del epoch
        return self.selection


def make_policy(pruning, *, num_samples: int, seed: int):
    if pruning.policy == "none":
        return FullData(num_samples)
    if pruning.policy == "random":
        return RandomSubset(num_samples, rho=pruning.rho, seed=seed)
    if pruning.policy == "static":
        return StaticSubset(pruning.selection, num_samples=num_samples)
    raise ValueError(f"config.pruning.policy: unknown policy {pruning.policy!r}; known: {POLICIES}")
