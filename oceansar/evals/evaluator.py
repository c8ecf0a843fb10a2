"""One named evaluator of `config.evals`: a labelled dataset, the probes run on it, and its headline metrics.

An `Evaluator` embeds its train and test splits with the embedding function it is handed (frozen
teacher features), runs the probes its spec names (k-NN with bootstrap, the linear probe, ridge
regression of target fields) and returns flat metrics prefixed with its name (`wv/knn/top1_k20`). Its
splits are built on first use, so an Experiment that never evaluates never reads them. `headline`
says which of its metrics a comparison table shows, and which way is better, so the columns of a
table come from what was evaluated.
"""
from __future__ import annotations

from collections.abc import Callable

import jax

from oceansar.data import sources
from oceansar.evals import features as features_lib
from oceansar.evals import probes
from oceansar.spec import EvalSpec


class Evaluator:
    """Frozen-feature evaluation on one labelled dataset (see the module docstring)."""

    def __init__(self, name: str, spec: EvalSpec, *, image_size: int, in_channels: int, seed: int,
                 cache: bool):
        self.name, self.spec = name, spec
        self._build = dict(image_size=image_size, in_channels=in_channels, seed=seed, cache=cache)
        self._splits = None

    @property
    def splits(self):
        """(train, test) sources, built on first use."""
        if self._splits is None:
            self._splits = sources.make_eval_sources(self.spec, **self._build)
        return self._splits

    def __call__(self, embed: Callable[[jax.Array], jax.Array], *, mesh, seed: int,
                 progress: bool = False) -> dict[str, float]:
        """Metrics of `embed` (images -> features) on this dataset, keys prefixed `<name>/`."""
        train_source, test_source = self.splits
        feats = [features_lib.extract_features(embed, src, batch_size=self.spec.batch_size, mesh=mesh,
                                               progress=progress, desc=f"eval {self.name} {split}")
                 for split, src in (("train", train_source), ("test", test_source))]
        results = probes.evaluate_features(
            feats[0], feats[1], num_classes=len(train_source.class_names), probes=self.spec.probes,
            targets=self.spec.targets, knn_ks=self.spec.knn_ks, n_bootstrap=self.spec.n_bootstrap, seed=seed)
        return {f"{self.name}/{k}": v for k, v in results.items()}

    def headline(self) -> list[tuple[str, str, bool]]:
        """(metric key, column title, higher is better) of the metrics a results table shows."""
        k = max(self.spec.knn_ks)
        columns = []
        if "knn" in self.spec.probes:
            columns += [(f"knn/top1_k{k}", f"k-NN top-1 (k={k})", True),
                        (f"knn/balanced_acc_k{k}", "k-NN bal. acc", True)]
        if "linear" in self.spec.probes:
            columns.append(("linear/top1", "linear top-1", True))
        if "regression" in self.spec.probes:
            columns += [(f"{t}/rmse", f"{t} RMSE", False) for t in self.spec.targets]
        prefix = f"{self.name}/"
        return [(prefix + key, f"{self.name} {title}", higher) for key, title, higher in columns]

