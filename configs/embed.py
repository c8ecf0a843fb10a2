r"""Embeddings of a pretraining pool with a released backbone: the input of every curation recipe.

    python launch.py --mode=export --workdir=runs/default            # a release to embed with
    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release \
        --workdir=runs/embed_wv
    python launch.py --mode=embed --workdir=runs/embed_mstar \
        --config=configs/embed.py:release=runs/default/release,source=folder,root=../shared/data/mstar10/train

writes `<workdir>/X.npy` (float16, L2-normalised CLS features of the release's centre view),
`sample_ids.npy`, `labels.npy` for labelled sources, and `embed.json` (release and source, read by
`--mode=curate`). The default pool (16384 simulated WV vignettes) takes about a minute on a 2-core CPU
with the default recipe's tiny ViT.
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, release="", source="synthetic_wv", root="", smoke=False)
    c = ml_collections.ConfigDict()
    c.name = "embed"
    c.seed = 0                     # the simulator pool's seed, as in configs/default.py (same pool)
    c.release = arg.release        # a directory written by --mode=export (config.json + model.safetensors)
    # The pool exactly as configs/default.py describes it (same fields and defaults), so a pretraining
    # recipe's `--config.data.*` overrides carry over. mean/std are not read here: the release's own
    # input standardisation (the release's config.json) is what its weights were trained with.
    c.data = default.get_config().data
    c.data.source = arg.source
    c.data.root = arg.root
    c.batch_size = 256             # global; a multiple of the device count (the last batch is padded)
    c.num_devices = 0              # 0 = every visible device
    c.progress = True              # tqdm bar

    if arg.smoke:
        c.data.num_samples = 256
        c.data.image_size = 32
        c.progress = False
    return c
