"""Pruning policies as a plan and a decision: what an epoch needs, then which samples it visits.

A pruning recipe is a *subset policy* that decides which part of the pool an epoch may visit
(`none`, `random`, `static`, `cluster_balanced`), optionally followed by a *loss rule* that drops and
re-weights samples inside that subset from the loss statistics (`infobatch`); `config.pruning.policy`
names it `"<subset>"`, `"<subset>+infobatch"` or plain `"infobatch"`, and `Pruner` composes the two.

At every epoch boundary the loop asks `Pruner.plan(epoch, ...)` what the coming epoch needs (`Needs`:
which source indices the current teacher must embed, whether the loss table is read), computes exactly
that, and hands it to `Pruner.decide`, which returns the `Decision`: the subset, the Selection served
from it, and the re-clustering's report when one ran. A policy never calls back into the loop and keeps
no state between epochs: every output is a function of (seed, epoch) and what the loop hands it, so a
resumed run, which restores the current subset and served Selection from its checkpoint, re-derives
nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from curation import dedup, hierarchical, sampling
from oceansar.data.selection import Selection
from oceansar.spec import PruningSpec


# `pruning.n_clusters=()`: the hierarchy is sized from the set it clusters (after any copy removal), k = N/20 and
# N/200 (Vo et al., arXiv 2405.15613), so one recipe fits a pool of a thousand images or of a million.
CLUSTER_DIVISORS = (20, 200)


@dataclasses.dataclass(frozen=True)
class Needs:
    """What the coming epoch's decision reads.

    Attributes:
      embed: source indices the current teacher must embed (`config.pruning.features` of one centre
        view), in this order; None when no embedding is read.
      describe: source indices whose copy descriptors (`curation.copies`) are read, or None.
      loss_table: whether the host copy of the per-sample loss table is read.
    """

    embed: np.ndarray | None = None
    describe: np.ndarray | None = None
    loss_table: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    """An epoch's selection.

    Attributes:
      subset: what the subset policy keeps (carried to the next epoch as `previous`).
      served: what the epoch visits, with loss weights (the subset itself without a loss rule).
      report: the re-clustering's record (cluster sizes before and after sampling) when one ran.
    """

    subset: Selection
    served: Selection
    report: dict[str, Any] | None = None


class _ReadsNothing:
    """A subset policy that decides from (seed, epoch) alone: it plans no embedding."""

    def plan(self, epoch, examples_seen, last_resampling_epoch) -> np.ndarray | None:
        return None

    def embeds(self) -> bool:
        return False

    def describes(self) -> bool:
        return False


class FullData(_ReadsNothing):
    """Every sample every epoch, weight 1 (the baseline)."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def decide(self, epoch, examples_seen, previous, last_resampling_epoch, embeddings, descriptors):
        return Selection.full(self.num_samples), None


class RandomSubset(_ReadsNothing):
    """A uniform random fraction `rho` of the pool, redrawn every epoch (the random baseline)."""

    def __init__(self, num_samples: int, *, rho: float, seed: int):
        self.num_samples, self.rho, self.seed = num_samples, rho, seed

    def decide(self, epoch, examples_seen, previous, last_resampling_epoch, embeddings, descriptors):
        rng = np.random.default_rng([self.seed, epoch, 0x5E1])
        n_keep = max(1, int(round(self.rho * self.num_samples)))
        return Selection.subset(np.sort(rng.choice(self.num_samples, n_keep, replace=False))), None


class StaticSubset(_ReadsNothing):
    """A subset curated offline (`launch.py --mode=curate`), visited whole every epoch."""

    def __init__(self, selection: Selection):
        self.selection = selection

    def decide(self, epoch, examples_seen, previous, last_resampling_epoch, embeddings, descriptors):
        return self.selection, None


class ClusterBalanced:
    """OceanSAR-1 dynamic pruning: balanced subsets of the pool's clusters, re-drawn as training goes.

    Full data until `warmup_examples` (T_w) are seen. Then, at the first epoch after the warm-up and
    every `every_epochs` (T_s) epochs, a fresh uniform subset of `subset_size` (M) samples is embedded
    (`features`: the current teacher's CLS on one centre view, as OceanSAR-1 does, or the model-free copy
    descriptors of `curation.copies`), optionally rid of near-copies (`copy_dedup_eps`) and PCA-whitened
    (`whiten`); hierarchical k-means with resampling (Vo et al., arXiv 2405.15613) clusters it, and
    balanced hierarchical sampling keeps round(rho * N) of them, choosing inside each leaf a fraction
    1 - eta closest to the centroid and the rest at random. Between re-clusterings the previous subset
    is served again.
    """

    def __init__(self, num_samples: int, spec: PruningSpec, *, seed: int):
        self.num_samples, self.seed, self.spec = num_samples, seed, spec
        self.subset_size = min(spec.subset_size or num_samples, num_samples)
        self.n_keep = min(max(1, int(round(spec.rho * num_samples))), self.subset_size)

    def _due(self, epoch: int, examples_seen: int, last_resampling_epoch: int | None) -> bool:
        """The first epoch past T_w, then every T_s epochs after the previous re-clustering."""
        if examples_seen < self.spec.warmup_examples:
            return False
        return last_resampling_epoch is None or epoch - last_resampling_epoch >= self.spec.every_epochs

    def _draw(self, epoch: int) -> tuple[np.ndarray, np.random.Generator]:
        """The epoch's embedded subset and the generator that then seeds clustering and sampling."""
        rng = np.random.default_rng([self.seed, epoch, 0xC1])
        return np.sort(rng.choice(self.num_samples, self.subset_size, replace=False)), rng

    def plan(self, epoch, examples_seen, last_resampling_epoch) -> np.ndarray | None:
        return self._draw(epoch)[0] if self._due(epoch, examples_seen, last_resampling_epoch) else None

    def embeds(self) -> bool:
        """Whether the planned subset is embedded by the teacher (else only described)."""
        return self.spec.features != "copy_descriptors"

    def describes(self) -> bool:
        """Whether the planned subset's copy descriptors are read (clustered, or used to drop copies)."""
        return self.spec.copy_dedup_eps > 0 or self.spec.features == "copy_descriptors"

    def _drop_copies(self, subset, embeddings, descriptors, rng):
        """The embedded subset without near-copies: SemDeDup on copy descriptors, clusters of ~128."""
        res = dedup.semdedup(np.asarray(descriptors, np.float32), n_clusters=max(subset.size // 128, 1),
                             eps_list=(self.spec.copy_dedup_eps,), key=int(rng.integers(2**31)))
        keep = res.kept[:, 0]
        return subset[keep], embeddings[keep], int(keep.sum())

    def decide(self, epoch, examples_seen, previous, last_resampling_epoch, embeddings, descriptors):
        if examples_seen < self.spec.warmup_examples:
            return Selection.full(self.num_samples), None
        if not self._due(epoch, examples_seen, last_resampling_epoch):
            return previous, None
        subset, rng = self._draw(epoch)
        # A copy: normalised in place below, never the caller's array.
        embeddings = np.array(descriptors if self.spec.features == "copy_descriptors" else embeddings, np.float32)
        survivors = subset.size
        if self.spec.copy_dedup_eps > 0:
            subset, embeddings, survivors = self._drop_copies(subset, embeddings, descriptors, rng)
        if self.spec.whiten:
            centred = embeddings - embeddings.mean(axis=0)
            eigval, eigvec = np.linalg.eigh(np.cov(centred, rowvar=False))
            embeddings = (centred @ eigvec) / np.sqrt(np.maximum(eigval, 1e-8))
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        levels, n_points = [], subset.size
        n_clusters = self.spec.n_clusters or tuple(max(subset.size // d, 1) for d in CLUSTER_DIVISORS)
        for k in n_clusters:  # a level never has more clusters than points below it
            levels.append(min(k, n_points))
            n_points = levels[-1]
        hierarchy = hierarchical.hierarchical_kmeans(
            embeddings, levels, n_resamples=self.spec.n_resamples, key=int(rng.integers(2**31)))
        kept = sampling.balanced_sample(hierarchy, min(self.n_keep, subset.size), key=int(rng.integers(2**31)),
                                        strategy="eta", eta=self.spec.eta)
        leaf = np.asarray(hierarchy.levels[0].assignment)
        top = hierarchy.leaf_of_level(len(levels) - 1)
        report = {
            "epoch": epoch, "examples_seen": examples_seen, "embedded": int(self.subset_size),
            "after_copy_dedup": survivors, "kept": int(kept.size), "levels": levels,
            "leaf_sizes_before": np.bincount(leaf, minlength=levels[0]).tolist(),
            "leaf_sizes_after": np.bincount(leaf[kept], minlength=levels[0]).tolist(),
            "top_sizes_before": np.bincount(top, minlength=levels[-1]).tolist(),
            "top_sizes_after": np.bincount(top[kept], minlength=levels[-1]).tolist(),
        }
        return Selection.subset(np.sort(subset[kept])), report


class InfoBatch:
    """InfoBatch (Qin et al., arXiv 2303.04947) on the drift-free loss table, inside a subset.

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

    def reads_table(self, examples_seen: int) -> bool:
        return examples_seen < self.anneal_at

    def apply(self, pool: Selection, epoch: int, *, examples_seen: int, loss_table) -> Selection:
        """The part of `pool` this epoch visits, with InfoBatch's re-weighting."""
        if not self.reads_table(examples_seen):
            return pool
        score = np.asarray(loss_table["score"])[pool.indices]
        seen = np.asarray(loss_table["count"])[pool.indices] > 0
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


class Pruner:
    """A subset policy, then optionally a loss rule inside the subset (`config.pruning.policy`)."""

    def __init__(self, spec: PruningSpec, *, num_samples: int, seed: int, total_examples: int):
        if spec.subset == "none":
            self.subset = FullData(num_samples)
        elif spec.subset == "random":
            self.subset = RandomSubset(num_samples, rho=spec.rho, seed=seed)
        elif spec.subset == "static":
            self.subset = StaticSubset(Selection.load(spec.selection, num_samples=num_samples))
        else:
            self.subset = ClusterBalanced(num_samples, spec, seed=seed)
        self.rule = None
        if spec.rule == "infobatch":
            self.rule = InfoBatch(prune_ratio=spec.prune_ratio, delta=spec.delta, total_examples=total_examples,
                                  seed=seed)

    def plan(self, epoch: int, examples_seen: int, *, last_resampling_epoch: int | None) -> Needs:
        """What `decide` will read for `epoch`, which starts after `examples_seen` examples."""
        planned = self.subset.plan(epoch, examples_seen, last_resampling_epoch)
        embed = planned if planned is not None and self.subset.embeds() else None
        describe = planned if planned is not None and self.subset.describes() else None
        return Needs(embed=embed, describe=describe,
                     loss_table=self.rule is not None and self.rule.reads_table(examples_seen))

    def decide(self, epoch: int, examples_seen: int, *, previous: Selection | None,
               last_resampling_epoch: int | None, embeddings: np.ndarray | None = None,
               descriptors: np.ndarray | None = None, loss_table: dict[str, np.ndarray] | None = None) -> Decision:
        """The epoch's Decision from what `plan` asked for.

        Args:
          epoch: the epoch about to start.
          examples_seen: examples seen before it.
          previous: the previous epoch's subset (None at the start of a run).
          last_resampling_epoch: the epoch of the latest re-clustering, None before the first.
          embeddings: [len(needs.embed), D] features of the planned indices, when planned.
          descriptors: [len(needs.describe), d] copy descriptors of the planned indices, when planned.
          loss_table: the host loss table, when planned.
        """
        subset, report = self.subset.decide(epoch, examples_seen, previous, last_resampling_epoch, embeddings,
                                            descriptors)
        served = subset
        if self.rule is not None:
            served = self.rule.apply(subset, epoch, examples_seen=examples_seen, loss_table=loss_table)
        return Decision(subset=subset, served=served, report=report)
