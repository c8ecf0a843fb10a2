r"""Image-text pretraining over redundant captions with weighted feature aggregation (WFA, arXiv 2505.11121).

    python launch.py --config=configs/wfa.py:weights=bleu                      # the simulator, generated captions
    python launch.py --config=configs/wfa.py:weights=attention,data=ucm,data_root=../shared/data   # UC Merced
    python launch.py --config=configs/wfa.py:smoke                             # tiny, for tests

Every image has m captions that repeat each other; WFA encodes each image's distinct captions once and merges
their features with importance weights: `single` (one caption drawn per image per step, the CLIP baseline),
`mean` (every original caption alike), `bleu` (WFA's non-parametric uniqueness: 1 - BLEU-4 against the image's
other captions, computed once by the source) or `attention` (WFA's learned weights). Symmetric InfoNCE (CLIP,
arXiv 2103.00020) with a learnable temperature over the global batch; `--config.text.loss=siglip` for the sigmoid
loss (arXiv 2303.15343). The aggregated modes add every encoded caption as its own text-to-image query, each original
caption alike (`text.caption_loss` = 1; chosen here, not the paper's): retrieval queries one caption at a time,
and on UC Merced the aggregate alone trained a text tower whose single captions retrieve worse than `single`'s
(`bleu` mR 0.17 against 0.23 at 64,000 examples; 0.24 with the term against 0.24, `docs/wfa_results.md`). Both
towers train from scratch (`init_from` a DINO release and `text.lock_image` for LiT).

Data: the simulator with generated captions (phenomenon, wind, sea state; 40 % of an image's captions repeat
another, `text.repeat_fraction`), or `data=ucm`: the real UC Merced images with UCM-captions
(`<data_root>/ucm_captions`: 1,680 train images, 5 captions each, 64 px RGB, 21 classes). Chosen here, at the CPU
scale: the default recipe's mu/8 image tower and a "mu" text tower, a 64-d joint space, batch 64, the default
recipe's lr (5e-4 at batch 64) with AdamW and weight decay 0.1 (CLIP), no flips or rotations (captions name
directions); an image-text run evaluates the weights it trains (no EMA teacher).
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, variant="mu/8", weights="bleu", data="simulator",
                           data_root="../shared/data")
    c = default.get_config(f"smoke={arg.smoke},variant={arg.variant},policy=none")
    c.name = "wfa"
    c.text.enabled = True
    c.text.aggregation = arg.weights
    c.text.caption_loss = 0.0 if arg.weights == "single" else 1.0  # single's one caption is already the query
    c.text.context_length = 64              # the simulator's longest captions take about 50 tokens
    c.optim.weight_decay = 0.1              # CLIP
    c.optim.weight_decay_end = 0.1
    c.optim.freeze_last_layer_examples = 0  # no prototypes to hold
    c.crops.global_scale = (0.5, 1.0)       # one random-resized crop per image, most of the scene kept
    # Retrieval (text-to-image and image-to-text R@1/5/10, mR) and zero-shot classification on a captioned
    # test split, next to the image tower's frozen-feature probes (`wv`).
    c.evals.captions = c.evals.wv.copy_and_resolve_references()
    c.evals.captions.update(probes=("retrieval", "zero_shot"), targets=())
    if arg.data == "ucm":
        c.data.source = "captions"
        c.data.root = f"{arg.data_root}/ucm_captions"
        c.data.split = "train"
        c.data.image_size = 64
        c.model.in_channels = 3
        c.text.context_length = 32          # UCM-captions' longest caption is 27 tokens
        c.text.capacity = 5.0               # its images keep 4.76 distinct captions of 5: encode them all
        c.crops.global_size = 56
        # UCM's classes as a k-NN evaluator of the image tower (its val split).
        c.evals.wv.update(source="folder", root=c.data.root, train_split="train", test_split="val",
                          probes=("knn",), targets=(), knn_ks=(1, 20))
        c.evals.captions.update(source="captions", root=c.data.root, test_split="val")
    elif arg.data != "simulator":
        raise ValueError(f"config arg: data={arg.data!r} is not simulator or ucm")
    if arg.smoke:
        c.data.num_samples = 128            # generated captions are scored (BLEU) as they are read
        c.text.vocab_size = 300
        c.text.embed_dim = 16
        c.total_examples = 16 * 8
        c.evals.wv.every_examples = 16 * 8
        c.evals.wv.probes = ("knn",)
        c.evals.captions.update(every_examples=16 * 8, num_test_per_class=3, batch_size=32)
    return c
