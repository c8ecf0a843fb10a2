"""Controlled duplication: a random base subset of a pool, each original repeated as near-duplicate copies.

Less-is-More (Barseghyan et al., 2025) asks what redundancy does at a fixed budget of examples seen by
training on a base subset duplicated in known ways: uniformly (about five augmented copies of every image,
which beat the plain subset) and with exponentially skewed multiplicities (which hurt, more as the skew
grows). `DuplicatedPool` builds these pools over any source: a `base_fraction` of it drawn at random, then
every original gets m_i members (itself and m_i - 1 near-duplicates made as the redundant pool makes them,
`pool.near_duplicate`), by `scheme`:

- `subset`: m_i = 1, the plain base subset;
- `uniform`: m_i = round(copies);
- `exponential`: m_i = 1 + e_i, the round((copies - 1) n) extra copies shared out proportionally to
  exp(-skew r_i / n) over a random rank r_i of the n originals (largest remainders, so the total is exact).
  The top tenth of the originals then holds (1 - exp(-skew / 10)) / (1 - exp(-skew)) of the extra copies:
  0.40 at skew 5, 0.86 at skew 20; skew 0 is uniform.

`subset`, `uniform` and `exponential` at the same `copies` train on the same originals, and the last two on
pools of the same size. Records are the base's image (a copy's degraded) and the pool index as `sample_id`;
`labels()` and `groups()` carry the base's hidden truth for diagnostics: a copy's class is its original's,
and its duplicate group is its original's group in the base (the base's burst where it knows one, else the
original itself). Everything is a function of the spec's seed. Numpy only.
"""
from __future__ import annotations

import numpy as np

from oceansar.data.pool import near_duplicate

SCHEMES = ("none", "subset", "uniform", "exponential")



def multiplicities(scheme: str, n: int, *, copies: float, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Members per original (the original included) of n originals under `scheme` (module docstring)."""
    if scheme == "subset":
        return np.ones(n, np.int64)
    if scheme == "uniform":
        return np.full(n, max(1, round(copies)), np.int64)
    if scheme != "exponential":
        raise ValueError(f"unknown duplication scheme {scheme!r}; known: {SCHEMES[1:]}")
    extra = round((copies - 1.0) * n)
    w = np.exp(-skew * rng.permutation(n) / n)
    quota = extra * w / w.sum()
    out = np.floor(quota).astype(np.int64)
    out[np.argsort(-(quota - out), kind="stable")[:extra - int(out.sum())]] += 1
    return 1 + out


def top_share(members: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the extra copies (members - 1) held by the top `fraction` of the originals."""
    extra = np.sort(np.asarray(members) - 1)[::-1]
    return float(extra[:max(1, round(fraction * extra.size))].sum() / max(extra.sum(), 1))


class DuplicatedPool:
    """A base subset of `base` with controlled duplication (see the module docstring).

    Args:
      base: any source.
      spec: a `DuplicationSpec` (scheme, base_fraction, copies, skew, seed).
      near: a `PoolSpec` whose crop, brightness, degradation, jpeg_quality and looks make the copies.
    """

    def __init__(self, base, spec, near):
        if spec.scheme not in SCHEMES[1:]:
            raise ValueError(f"DuplicatedPool: scheme {spec.scheme!r} is not one of {SCHEMES[1:]}")
        self.base, self.spec, self.near = base, spec, near
        rng = np.random.default_rng([spec.seed, 0xD0B1])
        n = max(1, round(spec.base_fraction * len(base)))
        self.originals = np.sort(rng.choice(len(base), n, replace=False))
        self.members = multiplicities(spec.scheme, n, copies=spec.copies, skew=spec.skew, rng=rng)
        group = np.repeat(np.arange(n), self.members)
        copy = np.arange(group.size) - np.repeat(np.cumsum(self.members) - self.members, self.members)
        order = rng.permutation(group.size)  # copies of one original are spread over the pool
        self._original = group[order]         # which original each pool index shows
        self._copy = copy[order]              # 0: the original itself
        self.class_names = getattr(base, "class_names", None)
        for name in ("num_skipped", "skipped_files"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def __len__(self) -> int:
        return int(self._original.size)

    def _base_indices(self, indices) -> np.ndarray:
        picked = self._original if indices is None else self._original[np.asarray(indices)]
        return self.originals[picked]

    def labels(self, indices=None):
        """Hidden class of each pool sample (its original's in the base), or None for an unlabelled base."""
        labels = self.base.labels() if callable(getattr(self.base, "labels", None)) else None
        return None if labels is None else np.asarray(labels)[self._base_indices(indices)]

    def groups(self, indices=None) -> np.ndarray:
        """Hidden duplicate group of each pool sample: its original's group in the base (diagnostics only)."""
        base = self._base_indices(indices)
        if callable(getattr(self.base, "groups", None)):
            return np.asarray(self.base.groups())[base]
        return base

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a pool of {len(self)}")
        image = np.asarray(self.base[int(self.originals[self._original[index]])]["image"])
        if self._copy[index]:
            image = near_duplicate(image, self.near, np.random.default_rng([self.spec.seed, 0xD1, index]))
        return {"image": image, "sample_id": np.int64(index)}

    def __repr__(self) -> str:
        return (f"DuplicatedPool({self.base!r}, scheme={self.spec.scheme}, originals={self.originals.size}, "
                f"n={len(self)}, seed={self.spec.seed})")
