"""One number over several labelled datasets: Less-is-More's headline (Barseghyan et al., 2025).

Each evaluator reports its k-NN accuracy with the standard deviation of its bootstrapped test set (m_i, sigma_i).
Over the n datasets that report the same metric, the headline is M = mean_i m_i and its std is
sqrt(sum_i sigma_i^2) / n, the std of a mean of n independent estimates. The paper writes (1/n) sqrt(sum_i sigma_i),
which is only a std if its sigma_i are variances; the squares here are deliberate.
"""
from __future__ import annotations

import math
import re

PREFIX = "mean"


def mean_over_datasets(results: dict[str, float]) -> dict[str, float]:
    """`mean/knn/top1_k{k}` (and `_std`, `_datasets`) for every k-NN accuracy that two or more evaluators report.

    Args:
        results: flat evaluator metrics, `<evaluator>/knn/top1_k{k}` with `<evaluator>/knn/top1_k{k}_std`.

    Returns:
        The aggregates; empty when fewer than two datasets share a metric.
    """
    by_metric: dict[str, list[tuple[float, float]]] = {}
    for key, value in results.items():
        match = re.fullmatch(r"([^/]+)/(knn/(?:top1|balanced_acc)_k\d+)", key)
        if match and match.group(1) != PREFIX and f"{key}_std" in results:
            by_metric.setdefault(match.group(2), []).append((value, results[f"{key}_std"]))
    out: dict[str, float] = {}
    for metric, pairs in sorted(by_metric.items()):
        if len(pairs) < 2:
            continue
        n = len(pairs)
        out[f"{PREFIX}/{metric}"] = sum(m for m, _ in pairs) / n
        out[f"{PREFIX}/{metric}_std"] = math.sqrt(sum(s * s for _, s in pairs)) / n
        out[f"{PREFIX}/{metric}_datasets"] = float(n)
    return out


def headline(evaluators) -> list[tuple[str, str, bool]]:
    """The mean 1-NN (smallest k every k-NN evaluator runs) as a table column, when two or more datasets run it."""
    knn = [e.spec.knn_ks for e in evaluators if "knn" in e.spec.probes]
    shared = set.intersection(*(set(ks) for ks in knn)) if len(knn) >= 2 else set()
    if not shared:
        return []
    k = min(shared)
    return [(f"{PREFIX}/knn/top1_k{k}", f"mean k-NN top-1 (k={k}) over {len(knn)} datasets", True)]
