"""Cross-modal or same-modal retrieval recall@K on frozen embeddings.

Here lives recall@K: each query has one matching gallery item (e.g. a caption's image), and a query
counts as recalled at K when its match ranks among the K gallery items most cosine-similar to it.
The kernel is jitted and blockwise over queries (memory O(block x n_gallery)); it ranks the match by
counting, never sorts. Embedding the queries and the gallery is the caller's business.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oceansar.evals.knn import check_features, l2_normalize, pad_rows


@functools.partial(jax.jit, static_argnames=("block", "matmul_dtype"))
def _match_ranks(queries, gallery, targets, *, block, matmul_dtype):
    """Rank [n_query] of each query's match among the gallery (0 = most similar)."""
    gallery_n = l2_normalize(gallery).astype(matmul_dtype)
    n_query = queries.shape[0]
    queries, n_blocks = pad_rows(queries, block)
    targets = jnp.pad(targets, (0, n_blocks * block - n_query))
    gallery_index = jnp.arange(gallery.shape[0])

    def one_block(args):
        q, t = args
        sim = jnp.matmul(l2_normalize(q).astype(matmul_dtype), gallery_n.T, preferred_element_type=jnp.float32)
        target_sim = jnp.take_along_axis(sim, t[:, None], axis=1)
        # Items strictly more similar, plus equally similar ones at a lower index: exactly the match's
        # position in a stable descending sort, so ties are deterministic.
        ahead = (sim > target_sim) | ((sim == target_sim) & (gallery_index[None] < t[:, None]))
        return jnp.sum(ahead, axis=1)

    ranks = jax.lax.map(one_block, (queries.reshape(n_blocks, block, -1), targets.reshape(n_blocks, block)))
    return ranks.reshape(-1)[:n_query]


def match_ranks(query_feats, gallery_feats, query_to_gallery: np.ndarray, block_size: int = 1024, *,
                matmul_dtype=jnp.float32) -> np.ndarray:
    """Rank [n_query] of each query's match among the gallery by cosine similarity (0 = the most similar).

    Args:
      query_feats: [n_query, D] query embeddings (numpy or jax, sharded or not).
      gallery_feats: [n_gallery, D] gallery embeddings.
      query_to_gallery: [n_query] index of each query's matching gallery item.
      block_size: queries per block; memory is O(block_size x n_gallery).
      matmul_dtype: dtype of the similarity matmul (accumulation is always float32); bfloat16 on GPU.
    """
    query_feats = check_features("query_feats", query_feats)
    gallery_feats = check_features("gallery_feats", gallery_feats)
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query_feats has dimension {query_feats.shape[1]} but gallery_feats has "
                         f"{gallery_feats.shape[1]}")
    targets = np.asarray(query_to_gallery)
    n_query, n_gallery = query_feats.shape[0], gallery_feats.shape[0]
    if targets.shape != (n_query,) or targets.dtype.kind not in "iu":
        raise ValueError(f"query_to_gallery must be [n_query={n_query}] integers, got shape {targets.shape} "
                         f"and dtype {targets.dtype}")
    if targets.min() < 0 or targets.max() >= n_gallery:
        raise ValueError(f"query_to_gallery must index the gallery [0, {n_gallery}), got range "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return np.asarray(_match_ranks(query_feats, gallery_feats, jnp.asarray(targets, jnp.int32),
                                   block=min(int(block_size), n_query), matmul_dtype=jnp.dtype(matmul_dtype)))


def recall_at_k(query_feats, gallery_feats, query_to_gallery: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                block_size: int = 1024, *, matmul_dtype=jnp.float32) -> dict[str, float]:
    """Mean recall@K of cosine retrieval (`match_ranks` for the arguments).

    Returns:
      {f"recall@{k}": fraction of queries whose match is among their top-k gallery items}.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be at least 1, got ks={ks}")
    ranks = match_ranks(query_feats, gallery_feats, query_to_gallery, block_size, matmul_dtype=matmul_dtype)
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}
