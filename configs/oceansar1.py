r"""The OceanSAR-1 recipe: DINO ViT on 1-channel VV Sentinel-1 WV vignettes at 256 px.

    python launch.py --config=configs/oceansar1.py                 # ViT-S/16
    python launch.py --config=configs/oceansar1.py:variant=S/8     # ViT-S/8
    python launch.py --config=configs/oceansar1.py:variant=B/8     # ViT-B/8
    python launch.py --config=configs/oceansar1.py:variant=R50     # ResNet-50, OceanSAR-1's baseline
    python launch.py --config=configs/oceansar1.py:smoke           # tiny, for tests (smoke,variant=R50: a toy ResNet)

DINO hyperparameters follow DINO's ViT recipe (arXiv 2104.14294): 2 x 224 global crops (0.4-1), 8 x 96 local
crops (0.05-0.4), tau_s 0.1, tau_t 0.04 -> 0.07 over 30 epochs' worth of examples, base lr 5e-4 per
256, cosine wd 0.04 -> 0.4, teacher momentum 0.996 -> 1, per-tensor clip 3.0, prototype layer
frozen for one epoch, drop path 0.1. OceanSAR-1 reports TenGeoP linear-probe accuracy 78.6 % (S/16),
82.1 % (S/8), 83.6 % (B/8) after pretraining on ~12 M real WV images; the embedded simulator is a
stand-in until a WV archive is pointed to with --config.data.source=tfds or wv_files.

A ResNet (`variant=R50`) takes DINO's ResNet-50 crop scales (global 0.14-1, local 0.05-0.14) and no stochastic
depth; the optimizer stays AdamW with the ViT's schedules (DINO trains its ResNet-50 with SGD or LARS, which
oceansar does not implement).
"""
from __future__ import annotations

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, variant="S/16", policy="cluster_balanced",
                           num_samples=1_000_000, epochs=100)
    c = default.get_config()  # every field of the embedded demo, then the OceanSAR-1 values
    c.name = "oceansar1"
    c.data.num_samples = arg.num_samples    # simulated pool (12 M real images in the paper)
    c.data.image_size = 256                 # 50 m pixels, 256 x 256 input (model card)
    c.model.variant = arg.variant
    resnet = arg.variant.startswith("R")
    c.model.drop_path_rate = 0.0 if resnet else 0.1   # DINO ViT-S recipe (no stochastic depth in a ResNet)
    c.model.out_dim = 65536                 # DINO prototypes
    c.model.hidden_dim = 2048
    c.model.bottleneck_dim = 256
    c.model.norm_last_layer = True
    c.model.dtype = "bfloat16"              # bf16 compute, f32 params and accumulation
    c.crops.global_size = 224
    c.crops.local_size = 96
    c.crops.n_local = 8
    c.crops.global_scale = (0.14, 1.0) if resnet else (0.4, 1.0)    # DINO's ResNet-50 and ViT recipes
    c.crops.local_scale = (0.05, 0.14) if resnet else (0.05, 0.4)
    c.crops.db_offset = 0.4
    c.crops.contrast = (0.6, 1.4)
    c.crops.blur_sigma = (0.1, 2.0)
    c.batch_size = 1024                     # 64 per device on 16 accelerators (DINO)
    epoch = c.data.num_samples              # one pass over the pool, in examples
    c.total_examples = arg.epochs * epoch
    c.optim.base_lr = 5e-4
    c.optim.min_lr = 1e-6
    c.optim.warmup_examples = 10 * epoch    # DINO: 10 warm-up epochs
    c.optim.freeze_last_layer_examples = epoch
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.07
    c.dino.teacher_temp_warmup_examples = 30 * epoch
    c.dino.teacher_momentum = 0.996
    c.evals.wv.num_train_per_class = 500
    c.evals.wv.num_test_per_class = 200
    c.evals.wv.every_examples = 10 * epoch
    c.evals.wv.batch_size = 512
    c.pruning.embed_batch_size = 512
    c.evals.wv.features = "cls"
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.data.worker_count = -1                # every usable core but one: rendering 256 px images is host work
    c.data.cache = False                    # 1M x 256 x 256 does not fit in memory; Grain workers read
    c.pruning.policy = arg.policy           # OceanSAR-1 dynamic pruning (arXiv 2504.06962)
    c.pruning.rho = 0.25
    c.pruning.eta = 0.5
    c.pruning.warmup_examples = 15 * epoch  # T_w: 15 % of the epochs
    c.pruning.every_epochs = 4              # T_s, in pruned epochs
    c.pruning.subset_size = 2 * int(c.pruning.rho * c.data.num_samples)  # M = 2 rho N
    m = c.pruning.subset_size               # k = M/20, M/200, M/2000
    c.pruning.n_clusters = (m // 20, m // 200, max(m // 2000, 2))
    c.pruning.n_resamples = 10
    c.pruning.features = "cls"              # the teacher's embeddings, as OceanSAR-1 clusters them

    if arg.smoke:
        c.data.num_samples = 64
        c.data.image_size = 32
        c.data.worker_count = 0
        c.pruning.subset_size = 64
        c.pruning.n_clusters = (8, 2)
        c.model.variant = "Rmu" if resnet else "mu/8"
        c.model.dtype = "float32"
        c.model.out_dim = 64
        c.model.hidden_dim = 32
        c.model.bottleneck_dim = 16
        c.crops.global_size = 24
        c.crops.local_size = 16
        if resnet:  # crops are multiples of the ResNet's stride, 32
            c.data.image_size, c.crops.global_size, c.crops.local_size = 64, 64, 32
        c.crops.n_local = 2
        c.batch_size = 16
        c.total_examples = 16 * 6
        c.optim.warmup_examples = 16
        c.optim.freeze_last_layer_examples = 16
        c.dino.teacher_temp_warmup_examples = 32
        c.evals.wv.num_train_per_class = 3
        c.evals.wv.num_test_per_class = 2
        c.evals.wv.every_examples = 0
        c.evals.wv.n_bootstrap = 20
        c.evals.wv.batch_size = 32
        c.pruning.embed_batch_size = 32
        c.eval_at_init = False
        c.log_every_steps = 2
        c.checkpoint_every_steps = 3
        c.progress = False
    return c
