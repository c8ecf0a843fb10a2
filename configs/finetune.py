r"""Fine-tuning a released backbone with a linear head on a labelled dataset (`--mode=finetune`).

    python launch.py --mode=finetune --config=configs/finetune.py --workdir=runs/finetune_wv        # 10 classes
    python launch.py --mode=finetune --config=configs/finetune.py:task=wv_regression --workdir=runs/finetune_wind
    python launch.py --mode=finetune --config=configs/finetune.py:task=opensarship,data_root=../shared/data \
        --workdir=runs/finetune_ships
    python launch.py --mode=finetune --config=configs/finetune.py:mode=linear --workdir=runs/linear_wv

`release` (default `runs/default/release`, what `python launch.py` writes) is the backbone: an oceansar release,
or any timm / DINO / DINOv2 / transformers ViT `.safetensors` file or model folder with `finetune.model` saying
what it is (variant, resolution, channels, input standardisation). Tasks: `wv_class` (the simulator's balanced
10-class split, 100 train / 60 test images per class: the default run's `wv` evaluator), `wv_regression` (wind
speed and Hs on the same images), `opensarship` (the real calibrated ship chips, Cargo / Tanker / Other and rare
types, a stratified 80/20 split), `ucm` (UC Merced land use, 21 classes, grayscale).

`mode=full` trains everything with BEiT's layer-wise learning-rate decay (arXiv 2106.08254; 0.75 as MAE's ViT-B),
`mode=linear` the head alone on the frozen backbone. Chosen here, at the CPU scale: 30 epochs, batch 64, AdamW,
peak lr 1e-3 (full; 1e-2 for the head alone), 3 warm-up epochs then cosine, weight decay 0.05, label smoothing
0.1, stochastic depth 0.1, random flips. The WV tasks also run the default run's frozen-feature evaluator (`evals.wv`:
k-NN, linear probe, wind and Hs regression) on the fine-tuned backbone at every test evaluation.

Expected, from the default run's release on a 2-core CPU (20-27 s each, test split, bootstrap std): `wv_class`
top-1 0.579 ± 0.019 (0.522 from random init, 0.442 with `mode=linear`), `wv_regression` wind RMSE 1.45 m/s and
Hs RMSE 0.72 m, `opensarship` top-1 0.52 ± 0.05 (balanced 0.39).
"""
from __future__ import annotations

import ml_collections

from configs import common, default

TASKS = ("wv_class", "wv_regression", "opensarship", "ucm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, task="wv_class", mode="full", release="runs/default/release",
                           data_root="../shared/data", smoke=False)
    if arg.task not in TASKS:
        raise ValueError(f"config arg: unknown task {arg.task!r}; known: {', '.join(TASKS)}")
    c = ml_collections.ConfigDict()
    c.name = "finetune"
    c.seed = 0
    c.num_devices = 0                  # 0 = every device
    c.progress = True
    c.init_from = arg.release          # an oceansar release, or a timm / DINOv2 / transformers ViT file or folder
    c.finetune = dict(
        task="classification",         # classification (the records' label) | regression (targets)
        targets=(),                    # regression: record fields
        mode=arg.mode,                 # full (layer-wise lr decay) | linear (backbone frozen)
        data=dict(
            source="synthetic_wv",     # synthetic_wv | folder | tfds | opensarship
            root="",                   # folder: <root>/{train,test}/<class>/*; tfds: data_dir; opensarship: release
            tfds_name="",
            train_split="train",
            test_split="test",
            num_train_per_class=100,   # synthetic_wv split sizes (the default run's `wv` evaluator)
            num_test_per_class=60,
            image_size=48,             # px read; a centre view resizes to the backbone's (the default pool's size)
        ),
        model=dict(                    # what a foreign init_from is (an oceansar release says it itself)
            variant="",                # "" = the release's
            img_size=224,
            in_channels=1,
            layer_scale=0.0,           # DINOv2 files: 1e-5 (their LayerScale tensors are loaded)
            mean=0.5,                  # input standardisation of uint8 / 255 pixels
            std=0.25,
        ),
        epochs=30,
        batch_size=64,
        lr=1e-3 if arg.mode == "full" else 1e-2,
        min_lr=1e-6,
        warmup_epochs=3,
        weight_decay=0.05,
        layer_decay=0.75,              # MAE's ViT-B value; 1.0 = one learning rate everywhere
        label_smoothing=0.1,
        drop_path_rate=0.1 if arg.mode == "full" else 0.0,
        flips=True,                    # scenes have no preferred up or left
        eval_every_epochs=10,          # test-split metrics during training (0: only at the end)
        log_every_steps=10,            # train/loss and train/lr to metrics.jsonl and TensorBoard
        n_bootstrap=1000,              # resamples of the test set for the std of each metric
    )
    # Pretraining's frozen-feature evaluators, run on the fine-tuned backbone at every test evaluation: how
    # fine-tuning moved the features its release was measured by (the WV tasks: the default run's `wv`).
    c.evals = default.get_config(f"smoke={arg.smoke}").evals if arg.task.startswith("wv") else {}
    f = c.finetune
    if arg.task == "wv_regression":
        f.task, f.targets, f.label_smoothing = "regression", ("wind_speed", "hs"), 0.0
    elif arg.task == "opensarship":
        f.data.update(source="opensarship", root=f"{arg.data_root}/opensarship", image_size=32)
        f.batch_size = 32              # 239 training chips
        f.epochs = 50
    elif arg.task == "ucm":
        f.data.update(source="folder", root=f"{arg.data_root}/ucm_captions", test_split="val", image_size=64)
    if arg.smoke:
        f.data.update(num_train_per_class=4, num_test_per_class=3, image_size=32)
        f.update(epochs=3, batch_size=16, warmup_epochs=1, eval_every_epochs=2, n_bootstrap=20)
        if c.evals:
            c.evals.wv.probes = ("knn",)
        c.progress = False
    return c
