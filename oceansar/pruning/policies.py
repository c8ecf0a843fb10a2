"""Pruning policies: (epoch, training signals) -> the epoch's Selection.

A policy is called at the start of every epoch by the training loop as
`select(epoch, examples_seen=..., loss_table=...)`, where `loss_table` is a callable returning the
host copy of the loss-statistics table (fetched only by the policies that read it). Its output is deterministic
given (seed, epoch) and the signals it reads, so a run resumed mid-way re-derives nothing: the
loop stores the current Selection in the checkpoint and calls the policy again only at the next
epoch boundary.
"""
from __future__ import annotations

import numpy as np

from oceansar.data.selection import Selection

POLICIES = ("none", "random", "static", "infobatch", "cluster_balanced")


class FullData:
    """Every sample every epoch, weight 1 (the baseline)."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def select(self, epoch: int, **signals) -> Selection:
        del epoch, signals
        return Selection.full(self.num_samples)


class RandomSubset:
    """A uniform random fraction `rho` of the pool, redrawn every epoch (the random baseline)."""

    def __init__(self, num_samples: int, *, rho: float, seed: int):
        self.num_samples, self.rho, self.seed = num_samples, rho, seed

    def select(self, epoch: int, **signals) -> Selection:
        del signals
        rng = np.random.default_rng([self.seed, epoch, 0x5E1])
        n_keep = max(1, int(round(self.rho * self.num_samples)))
        return Selection.subset(np.sort(rng.choice(self.num_samples, n_keep, replace=False)))


class StaticSubset:
    """A subset curated offline (`launch.py --mode=curate`), visited whole every epoch."""

    def __init__(self, path: str, *, num_samples: int):
        from oceansar.curate import load_static_selection  # jax-side module; keep policies light

        self.selection = load_static_selection(path, num_samples=num_samples)

    def select(self, epoch: int, **signals) -> Selection:
        del epoch, signals
        return self.selection


class InfoBatch:
    """InfoBatch (Qin et al., ICLR 2024; METHODS 5.1) on the drift-free loss table.

    Each epoch, among the samples already seen, those whose score is strictly below the mean score
    ("well learned") are randomly dropped with probability `prune_ratio`; the kept ones get loss
    weight 1 / (1 - prune_ratio) so the gradient stays unbiased. Samples never seen are kept (InfoBatch
    starts every score at 3.0, above any mean, so its first epoch is full data too). Once
    `examples_seen` reaches `delta` of the budget the policy anneals back to full data with weight 1.
    Scores are the table's batch-relative EMA (`loss_stats`), so stale scores of earlier epochs stay
    comparable despite the DINO loss drift.
    """

    def __init__(self, num_samples: int, *, prune_ratio: float, delta: float, total_examples: int,
                 seed: int):
        self.num_samples, self.seed = num_samples, seed
        self.keep_ratio = float(np.clip(1.0 - prune_ratio, 0.1, 1.0))
        self.anneal_at = delta * total_examples

    def select(self, epoch: int, *, examples_seen: int, loss_table, **signals) -> Selection:
        del signals
        if examples_seen >= self.anneal_at:
            return Selection.full(self.num_samples)
        table = loss_table()
        score, seen = np.asarray(table["score"]), np.asarray(table["count"]) > 0
        if not seen.any():
            return Selection.full(self.num_samples)
        well = np.flatnonzero(seen & (score < score[seen].mean()))
        rng = np.random.default_rng([self.seed, epoch, 0x1B])
        kept_well = rng.choice(well, int(np.floor(self.keep_ratio * well.size)), replace=False)
        rest = np.setdiff1d(np.arange(self.num_samples), well, assume_unique=True)
        indices = np.concatenate([rest, np.sort(kept_well)])
        weights = np.concatenate([np.ones(rest.size, np.float32),
                                  np.full(kept_well.size, 1.0 / self.keep_ratio, np.float32)])
        order = np.argsort(indices, kind="stable")
        return Selection(indices[order], weights[order])


class ClusterBalanced:
    """OceanSAR-1 dynamic pruning (METHODS 1.2, option A): balanced subsets of the teacher's clusters.

    Full data until `warmup_examples` (T_w) are seen. Then, at the first epoch after the warm-up and
    every `every_epochs` (T_s) epochs, the current teacher embeds a fresh uniform subset of
    `subset_size` (M) samples on one centre view, hierarchical k-means with resampling clusters it,
    and balanced hierarchical sampling keeps round(rho * N) of them, choosing inside each leaf a
    fraction 1 - eta closest to the centroid and the rest at random. Between resamplings the
    previous epoch's selection is served again (it lives in the checkpoint, so a resumed run
    continues with it).
    """

    def __init__(self, num_samples: int, *, rho: float, eta: float, warmup_examples: int,
                 every_epochs: int, subset_size: int, n_clusters, n_resamples: int, seed: int):
        self.num_samples, self.seed = num_samples, seed
        self.rho, self.eta = rho, eta
        self.warmup_examples, self.every_epochs = warmup_examples, every_epochs
        self.subset_size = min(subset_size or num_samples, num_samples)
        self.n_keep = min(max(1, int(round(rho * num_samples))), self.subset_size)
        self.n_clusters = tuple(int(k) for k in n_clusters)
        self.n_resamples = n_resamples

    def due(self, epoch: int, examples_seen: int, previous: Selection | None) -> bool:
        """Whether this epoch re-clusters (a pure function of the checkpointed state)."""
        if examples_seen < self.warmup_examples:
            return False
        coming_from_warmup = previous is None or len(previous) == self.num_samples
        return coming_from_warmup or epoch % self.every_epochs == 0

    def select(self, epoch: int, *, examples_seen: int, embed, previous: Selection | None = None,
               **signals) -> Selection:
        del signals
        if examples_seen < self.warmup_examples:
            return Selection.full(self.num_samples)
        if not self.due(epoch, examples_seen, previous):
            return previous
        from curation import hierarchical, sampling  # the kernels, only where re-clustering runs

        rng = np.random.default_rng([self.seed, epoch, 0xC1])
        subset = np.sort(rng.choice(self.num_samples, self.subset_size, replace=False))
        embeddings = np.asarray(embed(subset), np.float32)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        levels, n_points = [], self.subset_size
        for k in self.n_clusters:  # a level never has more clusters than points below it
            k = min(k, n_points)
            levels.append(k)
            n_points = k
        hierarchy = hierarchical.hierarchical_kmeans(
            embeddings, levels, n_resamples=self.n_resamples, key=int(rng.integers(2**31)))
        kept = sampling.balanced_sample(hierarchy, self.n_keep, key=int(rng.integers(2**31)),
                                        strategy="eta", eta=self.eta)
        return Selection.subset(np.sort(subset[kept]))


def make_policy(pruning, *, num_samples: int, seed: int, total_examples: int):
    if pruning.policy == "none":
        return FullData(num_samples)
    if pruning.policy == "random":
        return RandomSubset(num_samples, rho=pruning.rho, seed=seed)
    if pruning.policy == "infobatch":
        return InfoBatch(num_samples, prune_ratio=pruning.prune_ratio, delta=pruning.delta,
                         total_examples=total_examples, seed=seed)
    if pruning.policy == "cluster_balanced":
        return ClusterBalanced(num_samples, rho=pruning.rho, eta=pruning.eta,
                               warmup_examples=pruning.warmup_examples,
                               every_epochs=pruning.every_epochs, subset_size=pruning.subset_size,
                               n_clusters=pruning.n_clusters, n_resamples=pruning.n_resamples,
                               seed=seed)
    if pruning.policy == "static":
        return StaticSubset(pruning.selection, num_samples=num_samples)
    raise ValueError(f"config.pruning.policy: unknown policy {pruning.policy!r}; known: {POLICIES}")
