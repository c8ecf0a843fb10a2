r"""The equal-compute comparison: full, random, static and dynamic curation, same model and budget.

    python launch.py --mode=compare --config=configs/compare.py --workdir=runs/compare
    python launch.py --mode=compare --config=configs/compare.py:scale=8,variant=S/16 --workdir=...  # a GPU
    python launch.py --mode=compare --config=configs/compare.py:smoke --workdir=/tmp/cmp           # seconds
    python launch.py --mode=compare --config=configs/compare.py:objectives=dino+dinov2 \
        '--config.compare.methods=("full",)' --workdir=runs/objectives                             # DINO vs DINOv2
    python launch.py --mode=compare --config=configs/compare.py:data=pool+subset+uniform+exponential+heavy,\
methods=less_is_more --workdir=runs/less_is_more                                                   # the data grid

Every method trains the default recipe's model (configs/default.py) for the same number of examples
seen, continuing from one shared full-data warm-up per seed (T_w, ended at an epoch boundary): full
data, a random subset redrawn every epoch, a static SemDeDup subset and a static hierarchical-k-means
subset (both curated once from the warm-up teacher's embeddings), OceanSAR-1's dynamic
cluster-balanced pruning, and the same with InfoBatch inside the balanced subsets. Each run is
evaluated identically every `evals.<name>.every_examples` and at the end; `<workdir>/results.md` tables the
final numbers (mean ± std over seeds) and `accuracy.png` / `class_mix.png` draw the curves and the
hidden class mix each method trained on. Rerunning the command resumes: finished runs are read back,
an interrupted one continues from its checkpoint.

`data` adds Less-is-More's data axis (Barseghyan et al., 2025), each entry trained from its own warm-up to the
same budget: `pool` (the pool as it is, with `compare.methods`; `methods=less_is_more` makes them
hierarchical-k-means subsets of 50, 20 and 5 % and SemDeDup at the eps that keep 50 and 20 %), `subset` (a random 20 %
of the pool), `uniform` (that subset, every image 5 times: itself and 4 near-duplicates made as
`data.pool_transform`'s copies, here SAR speckle), `exponential` and `heavy` (the same number of copies with
multiplicities skewed as exp(-5 r) and exp(-20 r) over the originals' rank r in [0, 1): their top tenth holds 40 %
and 86 % of the copies), and the uniform pool filtered by SemDeDup back to the subset's size (`uniform`'s
`static_semdedup@rho=0.2`: Less-is-More names a "filtered" variant without defining it; this is ours).

`recipe=less_is_more` trains Less-is-More's iBOT with WSD schedules instead of DINO (1.7x the time per example
on a CPU). `recipe=wfa` (the simulator's generated captions) or `recipe=wfa_ucm` (UC Merced with UCM-captions under
`data_root`) compares image-text pretraining instead, with the objective axis over WFA's caption aggregations:

    python launch.py --mode=compare --config=configs/compare.py:recipe=wfa_ucm,objectives=single+mean+bleu+attention \
        '--config.compare.methods=("full",)' --workdir=runs/wfa_ucm

(plus `single_t2i` and `bleu_top3`, the controls of `docs/wfa_results.md`).

`recipe=ucm_pool` trains the default DINO recipe on a redundant, heavy-tailed pool built from the real UC Merced
`train` images under `data_root` (`data.pool_transform`: Zipf class shares, near-duplicate bursts) and evaluates on
UC Merced's `val` split:

    python launch.py --mode=compare --config=configs/compare.py:recipe=ucm_pool,seeds=5 --workdir=runs/compare_ucm

`scale` multiplies the pool, the budget, the warm-up and the evaluation interval (the schedules follow
the budget); the default (1) took 31 min on a 2-core CPU (2 seeds x 6 methods, 2000 steps each).
"""
from __future__ import annotations

import copy

import ml_collections

from configs import common, curate_hkmeans, curate_semdedup, default, less_is_more, wfa

# dino: the recipe as it is; dinov2: iBOT masked patches + KoLeo; ibot, koleo: one of the two terms alone; and
# for an image-text recipe, the four WFA caption aggregations.
OBJECTIVES = {"dino": {}, "dinov2": common.DINOV2, "ibot": {"ibot": common.DINOV2["ibot"]},
              "koleo": {"dino": common.DINOV2["dino"]},
              # The WFA recipe's aggregated modes add the per-caption term; `single`, the CLIP baseline, has none,
              # and `single_t2i` weighs its text-to-image half as that term would (0.5 i2t + 1.5 t2i), the
              # control that separates the term's weighting from what aggregation adds. `bleu_top3` encodes
              # 3 captions per image on average, the batch's least unique (lowest BLEU weight) dropped first.
              "single": {"text": {"aggregation": "single", "caption_loss": 0.0}},
              "single_t2i": {"text": {"aggregation": "single", "caption_loss": 1.0}},
              "bleu_top3": {"text": {"aggregation": "bleu", "capacity": 3.0}},
              **{mode: {"text": {"aggregation": mode}} for mode in ("mean", "bleu", "attention")}}

# The recipe every run trains: the default DINO demo, Less-is-More's iBOT with WSD schedules, or image-text
# pretraining (WFA) on the simulator's generated captions or on UC Merced with UCM-captions (under `data_root`).
RECIPES = {
    "default": lambda smoke, variant, data_root: default.get_config(f"smoke={smoke},variant={variant}"),
    "less_is_more": lambda smoke, variant, data_root: less_is_more.get_config(f"smoke={smoke},variant={variant}"),
    "wfa": lambda smoke, variant, data_root: wfa.get_config(f"smoke={smoke},variant={variant}"),
    "wfa_ucm": lambda smoke, variant, data_root: wfa.get_config(
        f"smoke={smoke},variant={variant},data=ucm,data_root={data_root}"),
    "ucm_pool": lambda smoke, variant, data_root: _ucm_pool(
        default.get_config(f"smoke={smoke},variant={variant}"), data_root),
}


def _ucm_pool(c: ml_collections.ConfigDict, data_root: str) -> ml_collections.ConfigDict:
    """The default DINO recipe on a redundant pool built from the real UC Merced `train` images.

    Zipf class shares over the 21 classes and near-duplicate bursts of 2-8 (crops, brightness, JPEG), the
    classes and duplicate groups kept as hidden truth (`data.pool_transform`): about 900 images at 48 px RGB.
    Evaluated by k-NN and a linear probe on UC Merced's own `val` split (frozen features of the teacher). The
    budget is in epochs of this small pool what the default recipe's is in passes over the simulator's order
    of magnitude fewer: 38,400 examples (about 40 passes), the warm-up and the evaluations scaled alike.
    """
    root = f"{data_root}/ucm_captions"
    c.data.update(source="folder", root=f"{root}/train", image_size=48)
    c.data.pool_transform.update(enabled=True, zipf=1.0, burst_fraction=0.45, copies=(2, 8), degradation="jpeg")
    c.model.in_channels = 3
    c.total_examples = 64 * 600
    c.optim.warmup_examples = 64 * 60
    c.pruning.warmup_examples = 64 * 150
    c.pruning.every_epochs = 16            # a pruned epoch of this pool is 3-4 steps
    c.evals.wv.update(source="folder", root=root, train_split="train", test_split="val", probes=("knn", "linear"),
                      targets=(), knn_ks=(1, 20), every_examples=64 * 150)
    return c


# The pool-side methods of the Less-is-More grid: hierarchical-k-means subsets down to 5 %, and SemDeDup at the two
# eps that keep 50 % and 20 % (a fixed eps is meaningless across embeddings: on the warm-up teacher's 32-d CLS
# both eps 0.01 and 0.05 keep under 1 % of the simulator pool, one image per SemDeDup cluster).
METHOD_SETS = {
    "default": ("full", "random", "static_semdedup", "static_hkmeans", "dynamic", "dynamic_infobatch"),
    "less_is_more": ("full", "static_hkmeans@rho=0.5", "static_hkmeans@rho=0.2", "static_hkmeans@rho=0.05",
                     "static_semdedup@rho=0.5", "static_semdedup@rho=0.2"),
}


def _objective(name: str) -> dict:
    if name not in OBJECTIVES:
        raise ValueError(f"config arg: unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return copy.deepcopy(OBJECTIVES[name])  # each its own blocks: a later override touches one objective


def _data(name: str, copies: float) -> dict:
    """One entry of the data axis: a patch of `data.duplication` (and the methods a duplicated pool trains)."""
    def duplicated(scheme, skew=0.0, methods=("full",)):
        # The simulator's near-duplicates are SAR: speckled (`...data.pool_transform.degradation=jpeg` for optical).
        return {"data": {"duplication": {"scheme": scheme, "skew": skew}, "pool_transform": {"degradation": "speckle"}},
                "compare": {"methods": methods}}

    known = {
        "pool": lambda: {},
        "subset": lambda: duplicated("subset"),
        # "filtered": the uniform pool, SemDeDup'd back to the base subset's size.
        "uniform": lambda: duplicated("uniform", methods=("full", f"static_semdedup@rho={1 / copies:.6g}")),
        "exponential": lambda: duplicated("exponential", skew=5.0),
        "heavy": lambda: duplicated("exponential", skew=20.0),
    }
    if name not in known:
        raise ValueError(f"config arg: unknown data variant {name!r}; known: {', '.join(known)}")
    return known[name]()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, scale=1, seeds=2, variant="mu/8", smoke=False, objectives="dino", data="pool",
                           methods="default", recipe="default", data_root="../shared/data")
    for name, known in (("methods", METHOD_SETS), ("recipe", RECIPES)):
        if arg[name] not in known:
            raise ValueError(f"config arg: unknown {name} {arg[name]!r}; known: {', '.join(known)}")
    smoke = "smoke" if arg.smoke else ""
    if arg.recipe == "default":  # spelled out: `show_config` follows a recipe's comments through this call
        c = default.get_config(f"smoke={arg.smoke},variant={arg.variant}")
    else:
        c = RECIPES[arg.recipe](arg.smoke, arg.variant, arg.data_root)
    c.name = "compare"
    scale = int(arg.scale)
    c.data.num_samples *= scale
    c.total_examples *= scale
    c.pruning.warmup_examples *= scale
    c.pruning.subset_size *= scale
    c.pruning.n_clusters = tuple(k * scale for k in c.pruning.n_clusters)
    for e in c.evals.values():
        e.every_examples *= scale
    c.eval_at_init = False          # the random-init reference is evaluated once per seed
    c.progress = False              # one line per run instead of a bar per run
    if c.evals.wv.source == "synthetic_wv" and not arg.smoke:
        # Paired differences of a few hundredths need a tighter test than the demo's 60 images per class
        # (bootstrap std 0.02 on one run): 300 per class (0.009), and a probe fitted on 300 per class.
        c.evals.wv.update(num_train_per_class=300, num_test_per_class=300)

    if arg.smoke:  # a base subset of 16 images = one batch of the 64-image pool, 4 members each
        c.data.duplication.update(base_fraction=0.25, copies=4.0)
    c.compare = dict(
        # `name` or `name@rho=<fraction>` (`static_semdedup@eps=<eps>`): oceansar.apps.compare.METHODS
        methods=METHOD_SETS[arg.methods],
        seeds=tuple(range(int(arg.seeds))),   # each seed draws its own pool, init and data order
        # The objective and data axes: name -> patch of this config (OBJECTIVES, _data), each pair trained
        # from its own warm-up; a patch may set compare.methods for its pair.
        objectives={name: _objective(name) for name in arg.objectives.split("+")},
        data={name: _data(name, c.data.duplication.copies) for name in arg.data.split("+")},
        # The order of the axes' entries in the tables (the first of each the reference of the paired
        # differences): the arg's.
        order=tuple(arg.objectives.split("+")) + tuple(arg.data.split("+")),
        # Static curation is sized from the pool the run actually has (counted, not data.num_samples):
        # hierarchical k = N/20, N/200, N/2000 (Vo et al., arXiv 2405.15613), and SemDeDup clusters of
        # about 128 points whose eps is found so that the subset keeps pruning.rho of the pool, like every
        # other subset method (the quantile of the similarities: no grid of eps to guess).
        hkmeans_divisors=(20, 200, 2000),
        semdedup_points_per_cluster=128,
    )
    sd = curate_semdedup.get_config(smoke)
    hk = curate_hkmeans.get_config(smoke)
    for sub in (sd, hk):
        sub.plot_examples = 0 if arg.smoke else sub.plot_examples
        sub.progress = False
    c.compare.curate_semdedup = sd
    c.compare.curate_hkmeans = hk

    if arg.smoke:
        c.data.num_samples = 64
        c.total_examples = 16 * 16
        c.pruning.warmup_examples = 64
        c.pruning.rho = 0.5
        c.pruning.n_clusters = (8, 2)
        c.pruning.n_resamples = 1
        c.evals.wv.every_examples = 16 * 8
        c.compare.hkmeans_divisors = (8, 32)
        c.compare.semdedup_points_per_cluster = 16
    return c
