"""Small helpers shared by the k-means modules (and by ``curation/hierarchical.py``): input checks (`_as_points`,
`_check_mode`), PRNG keys from ints (`_key`), row normalisation on the host and on the device (`_normalize_np`,
`_normalize`) and the float32 matmul precision every kernel uses (`_EXACT`). Nothing here knows about row blocks,
centroid tiles or Lloyd iterations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_MODES = ("l2", "cosine")
# Float32 products in float32: JAX's default precision rounds their inputs to TF32 on recent GPUs (bfloat16 on TPU),
# which would void the screening bound and shift the centroids.
_EXACT = lax.Precision.HIGHEST


def _as_points(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    x = x.astype(np.float32, copy=False)
    # A row with a NaN or an infinity has a non-finite sum; only an overflowing sum needs the elementwise check,
    # whose [n, d] mask would cost more than the sum.
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(x.sum(axis=1)).all()
    if not finite and (bad := ~np.isfinite(x).all(axis=1)).any():
        raise ValueError(f"{name} has {int(bad.sum())} rows with NaN/Inf values; "
                         f"first bad row is {int(np.argmax(bad))}")
    return x


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def _key(key) -> jax.Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _normalize_np(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _normalize(x: jax.Array) -> jax.Array:
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
