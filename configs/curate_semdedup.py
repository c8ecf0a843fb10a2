r"""SemDeDup (Abbas et al. 2023): remove semantic near-duplicates, cluster by cluster.

    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release --workdir=runs/embed_wv
    python launch.py --mode=curate --config=configs/curate_semdedup.py:embeddings=runs/embed_wv \
        --workdir=runs/curate_semdedup
    python launch.py --mode=curate --config=configs/curate_semdedup.py:embeddings=runs/embed_wv,eps=0.05

decides every eps of `eps_list` from one similarity computation, reports the kept size of each in
`summary.json`, and writes `kept_indices.npy` for `eps`. The simulator's bursts (8 consecutive
acquisitions of one scene) are the near-duplicates it should thin; with a trained backbone most of
each burst goes at eps=0.2.
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, embeddings="", eps=0.2, target_fraction=0.0, smoke=False)
    c = ml_collections.ConfigDict()
    c.name = "curate_semdedup"
    c.recipe = "semdedup"
    c.seed = 0                     # spherical k-means seed (and the "random" ordering's)
    c.embeddings = arg.embeddings  # directory written by --mode=embed (X.npy, sample_ids.npy, embed.json)
    # The source behind the embeddings, fields as in configs/default.py; source "" = the one named in
    # <embeddings>/embed.json. Used only to render the kept/removed grid.
    c.data = default.get_config().data
    c.data.source = ""
    c.semdedup = dict(
        n_clusters=64,             # SemDeDup uses 50k for 440M images; ~N/128 keeps clusters small here
        eps_list=(0.01, 0.05, 0.1, 0.2, 0.3),  # decided together; the summary reports each kept size
        eps=arg.eps,               # the one written: similarity 0.8 = eps 0.2 (Barseghyan et al. 2025)
        target_fraction=arg.target_fraction,  # > 0: eps chosen so the first pass keeps this fraction (the
                                   # quantile of the max similarities); eps and eps_list are then unused
        n_passes=1,                # > 1 re-clusters the survivors and repeats (Barseghyan et al. run up to 190)
        ordering="hard",           # keep the member farthest from the centroid (SemDeDup default)
        kmeans_iters=100,          # faiss niter of the SemDeDup configs
        block_size=64,             # similarity tile rows: 64 suits CPUs, 128-256 GPUs
        units_per_call=512,        # tile pairs per kernel call; a multiple of the device count
        compute_dtype="float32",   # "bfloat16" on GPUs; the comparison stays float32
    )
    c.plot_examples = 8            # images per row of kept_removed.png; 0 skips the grid
    c.num_devices = 0              # 0 = every visible device
    c.progress = True              # tqdm bars

    if arg.smoke:
        c.semdedup.n_clusters = 8
        c.semdedup.kmeans_iters = 5
        c.semdedup.units_per_call = 64
        c.plot_examples = 4
        c.progress = False
    return c
