"""Blockwise k-means in JAX: greedy k-means++ / k-means|| seeding, jitted Lloyd iterations, nearest-centroid
assignment. The package holds numeric kernels only, in four modules: `common` (input checks, keys, normalisation),
`search` (the blocked point layout, centroid tiles, the fused distance + argmin kernel and `assign`), `lloyd` (Lloyd
iterations and the `kmeans` fit) and `seeding` (k-means++ and k-means||). Hierarchy and sampling logic live in
``curation/hierarchical.py`` and ``curation/sampling.py``, and nothing here may import ``oceansar``. Re-exported below
are the public API and the private names that ``curation/hierarchical.py`` and the tests use. The tunables that
tests patch, `search._MAX_TILE_K` and `lloyd._SKIP_MIN_WORK`, are deliberately not re-exported: every reader looks
them up in the module that defines them (`lloyd` as `search._MAX_TILE_K`), so patch them there.
"""
# The underscored names are re-exported for curation/hierarchical.py and the tests, not for `import *`.
from curation.kmeans.common import _EXACT, _as_points, _key, _normalize, _normalize_np  # noqa: F401
from curation.kmeans.lloyd import KMeansResult, _full_pass, _moved_pass, _rescore, kmeans  # noqa: F401
from curation.kmeans.search import _rounding, _tiling, assign  # noqa: F401
from curation.kmeans.seeding import _kmeanspp_kernel, kmeans_plusplus  # noqa: F401

__all__ = ["KMeansResult", "assign", "kmeans", "kmeans_plusplus"]
