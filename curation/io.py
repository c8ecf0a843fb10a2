"""Files of the curation library: embeddings in, selections and plots out.

Embeddings live as a float16 (or float32) `X.npy`, memory-mapped, beside a parallel `sample_ids.npy`. A selection
is an array of kept row indices; the training system writes and reads it as files (`oceansar.data.selection`).
Plots use matplotlib's Agg backend. Nothing here computes a curation decision.
"""
from __future__ import annotations

import pathlib

import numpy as np

EMBEDDINGS_FILE = "X.npy"
SAMPLE_IDS_FILE = "sample_ids.npy"
_NAN_SCAN_ROWS = 65536  # rows checked per chunk, so a memmap is scanned without loading it whole


def _first_bad_row(x: np.ndarray) -> int | None:
    for start in range(0, x.shape[0], _NAN_SCAN_ROWS):
        bad = ~np.isfinite(np.asarray(x[start:start + _NAN_SCAN_ROWS])).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def load_embeddings(path, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Loads embeddings and their sample ids.

    Args:
        path: Directory holding `X.npy` and `sample_ids.npy`, or the path of the `X.npy` itself.
        mmap: Memory-map the embeddings (read-only) instead of loading them.

    Returns:
        (embeddings [n, d] float16/float32, sample_ids [n]).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: wrong rank or dtype, length mismatch, or NaN/Inf rows (the message names the file and row).
    """
    path = pathlib.Path(path)
    x_path = path / EMBEDDINGS_FILE if path.is_dir() else path
    ids_path = x_path.parent / SAMPLE_IDS_FILE
    for p in (x_path, ids_path):
        if not p.is_file():
            raise FileNotFoundError(f"embeddings file not found: {p}")
    x = np.load(x_path, mmap_mode="r" if mmap else None)
    if x.ndim != 2:
        raise ValueError(f"{x_path}: embeddings must be 2-D [n, d], got shape {x.shape}")
    if x.dtype not in (np.float16, np.float32):
        raise ValueError(f"{x_path}: embeddings must be float16 or float32, got {x.dtype}")
    ids = np.load(ids_path, allow_pickle=False)
    if ids.shape != (x.shape[0],):
        raise ValueError(f"{ids_path}: {ids.shape[0] if ids.ndim else 0} sample ids (shape {ids.shape}) "
                         f"for {x.shape[0]} embeddings in {x_path}")
    bad = _first_bad_row(x)
    if bad is not None:
        raise ValueError(f"{x_path}: row {bad} (sample id {ids[bad]!r}) has NaN/Inf values")
    return x, ids


def save_embeddings(directory, embeddings: np.ndarray, sample_ids: np.ndarray) -> pathlib.Path:
    """Writes `X.npy` (float16) and `sample_ids.npy` into `directory`; returns the directory."""
    directory = pathlib.Path(directory)
    embeddings = np.asarray(embeddings)
    sample_ids = np.asarray(sample_ids)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [n, d], got shape {embeddings.shape}")
    if sample_ids.shape != (embeddings.shape[0],):
        raise ValueError(f"sample_ids shape {sample_ids.shape} does not match {embeddings.shape[0]} embeddings")
    if sample_ids.dtype == object:
        raise ValueError("sample_ids must be a numeric or fixed-width string array, not dtype=object")
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / EMBEDDINGS_FILE, embeddings.astype(np.float16))
    np.save(directory / SAMPLE_IDS_FILE, sample_ids)
    return directory


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cluster_sizes(sizes_before: np.ndarray, sizes_after: np.ndarray, path) -> pathlib.Path:
    """Log-log cluster-size distribution before and after curation: size against rank, largest first."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for sizes, label in ((sizes_before, "before"), (sizes_after, "after")):
        s = np.sort(np.asarray(sizes))[::-1]
        s = s[s > 0]
        ax.loglog(np.arange(1, s.size + 1), s, label=f"{label} ({int(s.sum())} points, {s.size} clusters)")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("cluster size")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_kept_removed(images: np.ndarray, kept_mask: np.ndarray, path, *, max_per_row: int = 8) -> pathlib.Path:
    """Grid of example images: a row block of kept ones above a row block of removed ones.

    Args:
        images: [n, h, w] or [n, h, w, c] images (any numeric range; each is min-max scaled for display).
        kept_mask: [n] bool, True where the image was kept.
        path: Output image path.
        max_per_row: Images shown per group.
    """
    images = np.asarray(images)
    kept_mask = np.asarray(kept_mask, bool)
    if kept_mask.shape != (images.shape[0],):
        raise ValueError(f"kept_mask shape {kept_mask.shape} does not match {images.shape[0]} images")
    plt = _pyplot()
    groups = [("kept", np.flatnonzero(kept_mask)[:max_per_row]), ("removed", np.flatnonzero(~kept_mask)[:max_per_row])]
    fig, axes = plt.subplots(2, max_per_row, figsize=(1.5 * max_per_row, 3.4), squeeze=False)
    for row, (label, idx) in enumerate(groups):
        for col in range(max_per_row):
            ax = axes[row, col]
            ax.axis("off")
            if col < idx.size:
                img = images[idx[col]].astype(np.float32)
                img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
                ax.imshow(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img, cmap="gray")
        axes[row, 0].set_title(label, loc="left", fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
