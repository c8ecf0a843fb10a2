r"""Balanced data curation (Vo et al. 2024): hierarchical k-means with resampling, then balanced sampling.

    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release --workdir=runs/embed_wv
    python launch.py --mode=curate --config=configs/curate_hkmeans.py:embeddings=runs/embed_wv \
        --workdir=runs/curate_hkmeans
    python launch.py --mode=curate --config=configs/curate_hkmeans.py:embeddings=runs/embed_wv,target_count=1000

writes `kept_indices.npy` (a quarter of the embedded pool by default), `summary.json` (cluster
sizes and, for the simulator, TenGeoP class counts before and after: the dominant pure-ocean class
is capped, rare classes are kept whole), `cluster_sizes.png` and `kept_removed.png`. Pretrain on it
as a static subset with `--config.pruning.policy=static --config.pruning.selection=<workdir>`
(read by `oceansar.data.selection.Selection.load`).
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, embeddings="", target_fraction=0.25, target_count=0, smoke=False)
    c = ml_collections.ConfigDict()
    c.name = "curate_hkmeans"
    c.recipe = "hkmeans"
    c.seed = 0                     # k-means seeding and the sampling draws: the selection is a function of it
    c.embeddings = arg.embeddings  # directory written by --mode=embed (X.npy, sample_ids.npy, embed.json)
    c.target_fraction = arg.target_fraction  # rho of OceanSAR-1 (arXiv 2504.06962); sweep 0.1-0.5, start 0.25
    c.target_count = arg.target_count        # > 0 overrides target_fraction with an exact size
    # The source behind the embeddings, fields as in configs/default.py; source "" = the one named in
    # <embeddings>/embed.json. Used only to render the kept/removed grid.
    c.data = default.get_config().data
    c.data.source = ""
    c.hkmeans = dict(
        n_clusters=(400, 40, 4),   # k per level, data first: N/20, N/200, N/2000, N=8192 (arXiv 2405.15613)
        n_resamples=(0, 10, 10),   # resampling rounds per level; Vo's configs skip them at the data level
        sample_sizes=(),           # r per level; () = half the level's mean cluster size (Vo's rule of thumb)
        resample_strategy="closest",  # "c" of Vo's YAML: refit on the r members closest to each centroid
        n_iters=50,                # Lloyd iterations per k-means, as coded by Vo et al.
        n_splits=1,                # > 1 splits each level-1 cluster again (very large k, 10M-cluster runs)
        mode="l2",                 # Vo et al. cluster in L2; on L2-normalised features it ranks like cosine
        strategy="random",         # within-leaf pick: Vo's final-selection default; "eta" is OceanSAR-1's mix
        eta=0.5,                   # diversity knob for strategy "eta" (OceanSAR-1 default)
        multiplier=1,              # > 1 lets small clusters be repeated up to this many times
        compute_dtype="float32",   # "bfloat16" on GPUs and AVX512-BF16 CPUs: twice the distance matmul rate,
                                   # each point's two best candidates re-scored in float32
    )
    c.plot_examples = 8            # images per row of kept_removed.png; 0 skips the grid
    c.num_devices = 0              # 0 = every visible device (k-means shards the points over them)
    c.progress = True              # tqdm bars

    if arg.smoke:
        c.hkmeans.n_clusters = (16, 4)
        c.hkmeans.n_resamples = (0, 2)
        c.hkmeans.n_iters = 5
        c.plot_examples = 4
        c.progress = False
    return c
