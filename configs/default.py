r"""The embedded demo: DINO pretraining of a tiny ViT on the Sentinel-1 WV simulator.

Runs on a 2-core CPU in about 2 minutes and ends by printing k-NN, linear-probe and wind/Hs
regression results of the trained teacher next to the same architecture at random init:

    python launch.py                                   # = --config=configs/default.py
    python launch.py --config=configs/default.py:smoke --workdir=/tmp/smoke   # seconds, for tests

Rerunning the same command resumes from the workdir's latest checkpoint.
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, variant="mu/8", policy="cluster_balanced")
    c = common.dino_config()
    c.name = "default"
    c.seed = 0

    c.data = dict(
        source="synthetic_wv",     # synthetic_wv | folder | wv_files | tfds | captions | safe
        num_samples=16384,         # simulated vignettes in the pretraining pool
        image_size=48,             # px; small for the CPU (OceanSAR-1 uses 256)
        class_frequencies=(),      # () = the simulator's heavy-tailed TenGeoP mix
        burst_length=8,            # consecutive near-duplicates (neighbouring acquisitions)
        burst_jitter=0.05,         # parameter perturbation within a burst
        root="",                   # folder / wv_files / tfds data_dir
        labels_csv="",
        tfds_name="",
        tfds_split="train",
        skip_corrupt=False,        # True: skip and count unreadable files instead of failing
        mean=0.5,                  # input standardisation of uint8/255 pixels (dB-linear)
        std=0.25,
        worker_count=0,            # Grain worker processes; 0 reads in the main process, -1 = usable cores - 1
        cache=True,                # read the pool (and the eval splits) into memory once: the
                                   # simulator renders ~1 ms/image, more than a CPU train step costs
        pool_transform=dict(       # a redundant, heavy-tailed pool built from a labelled source, with its
                                   # classes and duplicate groups kept as hidden truth (measuring curation)
            enabled=False,
            zipf=1.0,              # class shares 1 / rank^zipf, classes in a random order
            class_shares=(),       # or explicit shares, one per class
            num_originals=0,       # 0 = as many distinct originals as the shares allow
            burst_fraction=0.3,    # originals that come with near-duplicate copies
            copies=(2, 8),         # members of a burst, the original included
            crop=(0.85, 0.97),     # a copy's random crop, fraction of the side, resized back
            brightness=(0.9, 1.1),
            degradation="jpeg",    # jpeg (optical) | speckle (SAR) | none
            jpeg_quality=(60, 90),
            looks=4.0,             # speckle looks
            seed=0,
        ),
        captions="",               # captions source: the JSON (UCM-captions or Karpathy layout) of the images
                                   # under root; "" = <root>/captions.json
        split="train",             # captions source: the split trained on
        safe=dict(                 # source="safe": Sentinel-1 SAFE products (folders or zips) under root
            pixel_spacing=50.0,    # m: intensity block-averaged (multilooked) to this ground spacing (OceanSAR-1)
            tile_size=0,           # multilooked px per square tile; 0 = one record per measurement (a WV vignette)
            polarisations=("vv",),  # hh | hv | vh | vv; () = every polarisation in the products
            thermal_noise=True,    # subtract the noise LUTs (range x azimuth) before calibrating
            db_range=(-35.0, 5.0),  # sigma0 dB mapped onto 0..255: the simulator's scale (synthetic.DB_RANGE)
            verify_checksums=False,  # MD5 of every file read against manifest.safe, at construction
        ),
        duplication=dict(          # Less-is-More's controlled duplication of a random base subset; its
                                   # copies are made as pool_transform's near-duplicates (crop, ..., looks)
            scheme="none",         # none | subset (plain) | uniform | exponential (skewed multiplicities)
            base_fraction=0.2,     # the base subset, a fraction of the pool
            copies=5.0,            # mean members per original, the original included
            skew=5.0,              # exponential: top tenth of the originals holds 40 % of the copies (20: 86 %)
            seed=0,
        ),
    )
    c.model = dict(
        variant=arg.variant,       # ViT variant string: Ti/16, S/16, S/8, B/16, B/8, mu/8 (tiny); or R50 (ResNet)
        in_channels=1,             # VV only
        drop_path_rate=0.0,        # stochastic depth; tiny nets do not need it
        layer_scale=0.0,           # LayerScale init (DINOv2: 1e-5); 0 = none, as DINO and every release so far
        remat="none",              # none | dots_saveable | full: blocks recomputed in the backward pass (B/8, L/16)
        attention="xla",           # xla | cudnn (flash kernel: CUDA GPUs, bfloat16/float16)
        out_dim=1024,              # prototypes K (65536 in DINO; scaled to the data)
        hidden_dim=256,
        bottleneck_dim=64,
        norm_last_layer=True,      # DINO default: unit prototypes, more stable for small nets
        dtype="float32",           # compute dtype; bfloat16 on GPU/TPU
    )
    c.crops = dict(
        global_size=32,            # 2 global crops per image
        local_size=16,             # n_local local crops per image
        n_global=2,
        n_local=4,
        global_scale=(0.4, 1.0),   # area fraction (DINO)
        local_scale=(0.1, 0.4),
        ratio=(3 / 4, 4 / 3),      # crop aspect ratio range
        interpolation="bicubic",
        flip_p=0.5,                # horizontal flip
        vflip_p=0.5,               # vertical flip: fine for wind speed and Hs, not wind direction
        rot90=True,                # no preferred look direction for the scalar targets
        jitter_p=0.8,              # probability of the photometric jitter (DINO colour jitter)
        db_offset=0.2,             # max additive offset, standardised dB units (brightness)
        contrast=(0.8, 1.2),       # multiplicative contrast around the image mean
        blur_p_global=(1.0, 0.1),  # DINO's asymmetric blur on the two global crops
        blur_p_local=0.5,
        blur_sigma=(0.1, 1.0),     # px at crop resolution
        saturation=(0.6, 1.4),     # RGB input only (optical): DINO's saturation jitter and random grayscale,
        grayscale_p=0.2,           # so views are not matched by their colour histogram; SAR ignores both
    )
    c.batch_size = 64              # global; split over every device
    c.total_examples = 64 * 2000   # budget in examples seen (never epochs): ~8 passes, ~3 min on 2 cores
    c.optim.base_lr = 2e-3         # tiny ViT, small batch: a higher lr per 256 converges in budget
    c.optim.warmup_examples = 64 * 200
    c.optim.freeze_last_layer_examples = 64 * 30
    c.dino.teacher_temp = 0.04     # tiny net, few prototypes: no temperature warm-up needed
    c.dino.teacher_temp_warmup_examples = 0
    c.dino.teacher_momentum = 0.99  # short run: a faster teacher

    c.pruning = dict(
        policy=arg.policy,         # none (full data) | random (a fraction rho redrawn every epoch)
                                   # | static (a --mode=curate output) | infobatch (loss-based)
                                   # | cluster_balanced (OceanSAR-1 dynamic pruning)
        rho=0.25,                  # kept fraction for subset policies
        selection="",              # static: a --mode=curate workdir (kept_indices.npy, weights.npy)
        eta=0.5,                   # cluster_balanced: within-leaf mix, 0 closest to centroid, 1 random
        warmup_examples=64 * 400,  # cluster_balanced T_w: full data until the teacher is informative
        every_epochs=4,            # cluster_balanced T_s: re-cluster every T_s (pruned) epochs
        subset_size=0,             # cluster_balanced M: samples described per resampling (0 = all).
                                   # The whole pool: with M = 2 rho N a selection can at most halve a
                                   # class, which bounds how far the head is flattened (docs/engagement.md)
        n_clusters=(),             # hierarchical k-means levels (data level first); () = N/20, N/200 of the
                                   # clustered set (Vo et al., arXiv 2405.15613): 819, 81 for this pool
        n_resamples=2,             # Vo et al. resampling rounds per level
        prune_ratio=0.5,           # infobatch r: fraction of below-mean-score samples dropped
        delta=0.875,               # infobatch: full data again after this fraction of the budget
        loss_stats_momentum=0.5,   # EMA of each sample's batch-relative loss
        embed_batch_size=256,      # global batch of the teacher's re-embedding at a re-clustering
        features="cls",            # cluster the teacher's cls | cls+mean_patch | copy_descriptors. Balancing
                                   # the teacher's CLS clusters beat full data at equal compute (5 seeds,
                                   # paired: k-NN +0.018 +- 0.008, linear +0.029 +- 0.007) though it leaves
                                   # the hidden head class at 0.63; the model-free copy descriptors flatten it
                                   # to 0.33 and gain nothing (+0.003 +- 0.009 linear) (docs/engagement.md).
        whiten=False,              # PCA-whiten the embedded features before clustering
        copy_dedup_eps=0.0,        # > 0: near-copies by copy descriptor (cosine > 1 - eps) dropped first
    )
    c.evals = dict(                # named frozen-feature evaluators of the teacher; each its own dataset
        wv=dict(                   # the simulator's balanced 10-class split, with wind and Hs targets
            source="synthetic_wv",  # synthetic_wv (balanced splits, disjoint seeds) | folder | tfds
            root="",               # folder: <root>/{train,test}/<class>/*; tfds: data_dir
            tfds_name="",
            train_split="train",
            test_split="test",
            num_train_per_class=100,
            num_test_per_class=60,
            probes=("knn", "linear", "regression"),
            targets=("wind_speed", "hs"),  # record fields the regression probe predicts
            knn_ks=(1, 20),
            every_examples=64 * 500,  # also at the end
            features="cls",        # cls | cls+mean_patch
            batch_size=256,
            n_bootstrap=1000,
        ),
    )
    c.eval_at_init = True          # the random-init baseline in the summary
    c.log_every_steps = 20
    c.checkpoint_every_steps = 100
    c.keep_checkpoints = 2
    c.num_devices = 0              # 0 = every visible device
    c.mesh = dict(
        fsdp=1,                    # devices each parameter and its optimizer state are sharded over (FSDP); 1 = DP
        fsdp_min_size=2**14,       # smaller tensors stay replicated: their all-gather costs more than it saves
    )
    c.progress = True              # tqdm bar
    c.resume = ""                  # a checkpoint dir to continue from if the workdir has none
    c.init_from = ""               # a release dir to initialise the backbone from

    if arg.smoke:
        c.data.num_samples = 512
        c.data.image_size = 32
        c.crops.global_size = 24
        c.crops.local_size = 16
        c.crops.n_local = 2
        c.model.out_dim = 128
        c.model.hidden_dim = 64
        c.model.bottleneck_dim = 32
        c.batch_size = 16
        c.total_examples = 16 * 12
        c.optim.warmup_examples = 16 * 2
        c.optim.freeze_last_layer_examples = 16
        c.evals.wv.num_train_per_class = 4
        c.evals.wv.num_test_per_class = 3
        c.evals.wv.every_examples = 16 * 6
        c.evals.wv.n_bootstrap = 50
        c.evals.wv.batch_size = 32
        c.pruning.embed_batch_size = 32
        c.log_every_steps = 2
        c.checkpoint_every_steps = 4
        c.progress = False
    return c
