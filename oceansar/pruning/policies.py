"""Pruning policies: (epoch, training signals) -> the epoch's Selection.

A pruning recipe is a *subset policy* that decides which part of the pool an epoch may visit
(`none`, `random`, `static`, `cluster_balanced`), optionally followed by a *loss rule* that drops
and re-weights samples inside that subset from the loss statistics (`infobatch`). The config names
it `"<subset>"`, `"<subset>+infobatch"` or plain `"infobatch"` (= `"none+infobatch"`);
`Pruner` composes the two.

The training loop calls `Pruner.select` at the start of every epoch with the training signals
(`examples_seen`, the teacher `embed` function, the host copy of the `loss_table`; each fetched only
by the policies that read it) and the previous epoch's subset. Every output is deterministic given
(seed, epoch) and those signals, so a run resumed mid-way re-derives nothing: the loop stores the
current subset and the served Selection in the checkpoint and calls the policy again only at the
next epoch boundary.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from oceansar.data.selection import Selection

SUBSET_POLICIES = ("none", "random", "static", "cluster_balanced")
LOSS_RULES = ("infobatch",)
POLICIES = SUBSET_POLICIES + LOSS_RULES + tuple(f"{s}+{r}" for s in SUBSET_POLICIES[1:]
                                                for r in LOSS_RULES)


def parse_policy(name: str) -> tuple[str, str | None]:
    """Splits a policy name: `"cluster_balanced+infobatch"` -> `("cluster_balanced", "infobatch")`;
    `"infobatch"` -> `("none", "infobatch")`."""
    if name not in POLICIES:
        raise ValueError(f"config.pruning.policy: unknown policy {name!r}; known: {POLICIES}")
    if name in LOSS_RULES:
        return "none", name
    subset, _, rule = name.partition("+")
    return subset, rule or None


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
    """InfoBatch (Qin et al., ICLR 2024; METHODS 5.1) on the drift-free loss table, inside a subset.

    Each epoch, among the subset's samples already seen, those whose score is strictly below the
    subset's mean score ("well learned") are randomly dropped with probability `prune_ratio`; the
    kept ones get loss weight 1 / (1 - prune_ratio) (times the subset's own weight) so the gradient
    stays unbiased. Samples never seen are kept (InfoBatch starts every score at 3.0, above any
    mean, so its first epoch is the whole subset too). Once `examples_seen` reaches `delta` of the
    budget the rule anneals back to the whole subset. Scores are the table's batch-relative EMA
    (`loss_stats`), so stale scores of earlier epochs stay comparable despite the DINO loss drift.
    """

    def __init__(self, *, prune_ratio: float, delta: float, total_examples: int, seed: int):
        self.seed = seed
        self.keep_ratio = float(np.clip(1.0 - prune_ratio, 0.1, 1.0))
        self.anneal_at = delta * total_examples

    def apply(self, pool: Selection, epoch: int, *, examples_seen: int, loss_table) -> Selection:
        """The part of `pool` this epoch visits, with InfoBatch's re-weighting."""
        if examples_seen >= self.anneal_at:
            return pool
        table = loss_table()
        score = np.asarray(table["score"])[pool.indices]
        seen = np.asarray(table["count"])[pool.indices] > 0
        if not seen.any():
            return pool
        well = np.flatnonzero(seen & (score < score[seen].mean()))
        rng = np.random.default_rng([self.seed, epoch, 0x1B])
        kept_well = rng.choice(well, int(np.floor(self.keep_ratio * well.size)), replace=False)
        keep = np.ones(len(pool), bool)
        keep[well] = False
        keep[kept_well] = True
        weights = pool.weights.copy()
        weights[kept_well] /= self.keep_ratio
        return Selection(pool.indices[keep], weights[keep])


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
        self.last_resampling: dict[str, Any] | None = None

    def due(self, epoch: int, examples_seen: int, last_resampling_epoch: int | None) -> bool:
        """Whether this epoch re-clusters: the first epoch past T_w, then every T_s epochs after the
        previous re-clustering (`(e - T_w) % T_s == 0` of METHODS 1.2, counted from the first
        pruned epoch). A pure function of what the checkpoint holds."""
        if examples_seen < self.warmup_examples:
            return False
        return last_resampling_epoch is None or epoch - last_resampling_epoch >= self.every_epochs

    def select(self, epoch: int, *, examples_seen: int, embed, previous: Selection | None = None,
               last_resampling_epoch: int | None = None, **signals) -> Selection:
        del signals
        self.last_resampling = None
        if examples_seen < self.warmup_examples:
            return Selection.full(self.num_samples)
        if not self.due(epoch, examples_seen, last_resampling_epoch):
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
        leaf = np.asarray(hierarchy.levels[0].assignment)
        top = hierarchy.leaf_of_level(len(levels) - 1)
        self.last_resampling = {  # the cluster-size histograms of the selection (run report)
            "epoch": epoch, "examples_seen": examples_seen, "embedded": int(self.subset_size),
            "kept": int(kept.size), "levels": levels,
            "leaf_sizes_before": np.bincount(leaf, minlength=levels[0]).tolist(),
            "leaf_sizes_after": np.bincount(leaf[kept], minlength=levels[0]).tolist(),
            "top_sizes_before": np.bincount(top, minlength=levels[-1]).tolist(),
            "top_sizes_after": np.bincount(top[kept], minlength=levels[-1]).tolist(),
        }
        return Selection.subset(np.sort(subset[kept]))


class Pruner:
    """A subset policy, then optionally a loss rule inside the subset (the config's `policy`)."""

    def __init__(self, subset, rule: InfoBatch | None = None):
        self.subset, self.rule = subset, rule

    def select(self, epoch: int, *, previous: Selection | None, examples_seen: int,
               **signals) -> tuple[Selection, Selection]:
        """The epoch's subset and the Selection served from it.

        Args:
          epoch: the epoch about to start.
          previous: the previous epoch's subset (None at the start of a run).
          examples_seen: examples seen before this epoch.
          **signals: `embed(indices) -> features` and `loss_table() -> dict`, read on demand.

        Returns:
          (subset, served): what the subset policy keeps this epoch and what the loss rule (if any)
          serves of it. Without a loss rule they are the same Selection.
        """
        subset = self.subset.select(epoch, previous=previous, examples_seen=examples_seen, **signals)
        if self.rule is None:
            return subset, subset
        return subset, self.rule.apply(subset, epoch, examples_seen=examples_seen,
                                       loss_table=signals["loss_table"])

    @property
    def last_resampling(self) -> dict[str, Any] | None:
        """Cluster sizes of the latest re-clustering, for cluster-balanced subsets."""
        return getattr(self.subset, "last_resampling", None)


def make_policy(pruning, *, num_samples: int, seed: int, total_examples: int) -> Pruner:
    """The Pruner named by `pruning.policy` with the hyperparameters of `config.pruning`."""
    subset_name, rule_name = parse_policy(pruning.policy)
    if subset_name == "none":
        subset = FullData(num_samples)
    elif subset_name == "random":
        subset = RandomSubset(num_samples, rho=pruning.rho, seed=seed)
    elif subset_name == "static":
        subset = StaticSubset(pruning.selection, num_samples=num_samples)
    else:
        subset = ClusterBalanced(num_samples, rho=pruning.rho, eta=pruning.eta,
                                 warmup_examples=pruning.warmup_examples,
                                 every_epochs=pruning.every_epochs, subset_size=pruning.subset_size,
                                 n_clusters=pruning.n_clusters, n_resamples=pruning.n_resamples,
                                 seed=seed)
    rule = None
    if rule_name == "infobatch":
        rule = InfoBatch(prune_ratio=pruning.prune_ratio, delta=pruning.delta,
                         total_examples=total_examples, seed=seed)
    return Pruner(subset, rule)
