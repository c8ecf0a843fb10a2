r"""RS-Prune (Wei et al. 2025, arXiv 2512.23239): entropy filter, then scene-aware sampling guided by a
labelled reference set.

    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release --workdir=runs/embed_wv
    python launch.py --mode=curate --config=configs/curate_rs_prune.py:embeddings=runs/embed_wv \
        --workdir=runs/curate_rs_prune

Stage 1 scores every image of the embedded pool (named by `<embeddings>/embed.json`) with the local
2-D entropy and drops the lowest `entropy_percentile`; stage 2 assigns the survivors to the scene
prototypes of the reference set, clusters each scene and samples stratified quotas. By default the
reference is the simulator's labelled evaluation split (the classes of TenGeoP-SARwv, Wang et al. 2019,
Scientific Data, standing in for RS-Prune's optical scene datasets on WV SAR) embedded here with the
pool's release; pass `reference_embeddings=DIR` (+ `reference_labels=
FILE.npy`, default DIR/labels.npy) to use one embedded beforehand with --mode=embed.
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, embeddings="", target_fraction=0.15, target_count=0, reference_embeddings="",
                           reference_labels="", smoke=False)
    c = ml_collections.ConfigDict()
    c.name = "curate_rs_prune"
    c.recipe = "rs_prune"
    c.seed = 0                     # per-scene k-means and the random fill
    c.embeddings = arg.embeddings  # directory written by --mode=embed (X.npy, sample_ids.npy, embed.json)
    c.target_fraction = arg.target_fraction  # RS-Prune prunes 85 % of the pool
    c.target_count = arg.target_count        # > 0 overrides target_fraction with an exact size
    # The source behind the embeddings, fields as in configs/default.py; source "" = the one named in
    # <embeddings>/embed.json. Stage 1 reads its images.
    c.data = default.get_config().data
    c.data.source = ""
    c.rs_prune = dict(
        entropy_percentile=20.0,   # mild cut: low-entropy WV images include real low-wind and sea-ice scenes
        n_levels=256,              # entropy quantisation levels (the reference); 64 is ~16x less histogram memory
        entropy_batch_size=64,     # images per entropy kernel call; a multiple of the device count
        eta=0.5,                   # per cluster: (1 - eta) closest to the centroid, the rest at random
        k_scale=1.0,               # k_s = k_scale * sqrt(|scene|) clusters per scene
        kmeans_iters=20,           # Lloyd iterations per scene
        reference=dict(
            embeddings=arg.reference_embeddings,  # "" = embed the split below with `release`
            labels=arg.reference_labels,          # "" = <reference embeddings>/labels.npy
            release="",            # "" = the release that embedded the pool (embed.json)
            source="synthetic_wv", # as config.evals.<name>: synthetic_wv | folder (<root>/train/<class>/*) | tfds
            root="",
            tfds_name="",
            split="train",         # tfds split
            num_per_class=60,      # synthetic_wv: labelled vignettes per TenGeoP class (default eval split)
            batch_size=256,        # embedding batch; a multiple of the device count
        ),
    )
    c.plot_examples = 8            # images per row of kept_removed.png; 0 skips the grid
    c.num_devices = 0              # 0 = every visible device
    c.progress = True              # tqdm bars

    if arg.smoke:
        c.rs_prune.kmeans_iters = 5
        c.rs_prune.k_scale = 0.1   # one cluster per scene at smoke sizes: one k-means compilation
        c.rs_prune.entropy_batch_size = 32
        c.rs_prune.reference.num_per_class = 4
        c.rs_prune.reference.batch_size = 32
        c.plot_examples = 4
        c.progress = False
    return c
