"""Pieces shared by the recipes: the `get_config(arg)` argument parser and the DINO defaults.

Every default of every recipe lives in `configs/`: library code reads config attributes and never
supplies a fallback of its own.
"""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a recipe argument like "variant=S/8,smoke" against typed defaults.

    A bare word sets a boolean default to True; `key=value` is converted to the default's type.
    Unknown keys are an error naming the key and the known ones.
    """
    parsed = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config arg: unknown key {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config arg: {key!r} needs a value ({key}=...)")
            parsed[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg: {key}={value!r} is not a boolean")
            parsed[key] = value.lower() in ("true", "1")
        else:
            try:
                parsed[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(f"config arg: {key}={value!r} is not a "
                                 f"{type(default).__name__}") from e
    return ml_collections.ConfigDict(parsed)


def dino_config() -> ml_collections.ConfigDict:
    """DINO objective and optimisation defaults (DINO, arXiv 2104.14294), budgets in examples seen.

    The DINOv2 terms (iBOT's masked patches, KoLeo, Sinkhorn-Knopp) are present and off; `dinov2_objective`
    turns them on with DINOv2's values (arXiv 2304.07193).
    """
    c = ml_collections.ConfigDict()
    c.dino = dict(
        student_temp=0.1,             # tau_s (DINO).
        teacher_temp=0.07,            # tau_t after warm-up (DINO ViT recipe).
        warmup_teacher_temp=0.04,     # tau_t at step 0; lower is sharper, avoids early collapse.
        teacher_temp_warmup_examples=0,  # set per recipe (DINO: 30 epochs' worth).
        center_momentum=0.9,          # EMA of the teacher-logit centre.
        teacher_momentum=0.996,       # m0; cosine to 1.0 over the run.
        centering="ema",              # ema (DINO's centre) | sinkhorn_knopp (DINOv2), CLS and patch targets.
        sinkhorn_iterations=3,        # DINOv2.
        koleo_weight=0.0,             # KoLeo on the student's global-crop CLS (DINOv2: 0.1); 0 = off.
    )
    c.ibot = dict(                    # iBOT masked-patch loss (arXiv 2111.07832); weight 0 = off.
        weight=0.0,                   # lambda2 (iBOT, DINOv2: 1.0).
        mask_probability=0.5,         # share of global crops masked.
        mask_ratio=(0.1, 0.5),        # masked fraction of a masked crop, uniform; blocks as BEiT/iBOT.
        student_temp=0.1,
        teacher_temp=0.07,            # patch tau_t after the warm-up (dino.teacher_temp_warmup_examples).
        warmup_teacher_temp=0.04,
        center_momentum=0.9,          # EMA of the teacher patch-logit centre (ema centring).
        separate_head=False,          # False: the DINO head maps patches too (DINOv2 default).
        out_dim=8192,                 # prototypes of a separate patch head.
    )
    c.text = dict(                    # image-text pretraining with WFA (arXiv 2505.11121); enabled replaces DINO.
        enabled=False,
        size="mu",                    # text tower (the ViT's sizes).
        vocab_size=1000,              # BPE trained on the training captions.
        context_length=32,            # UCM-captions' longest caption is 27 tokens.
        max_captions=5,               # UCM-captions, RSICD, RSITMD, Sydney: 5 per image.
        embed_dim=64,                 # joint space.
        aggregation="bleu",           # single | mean | bleu (WFA uniqueness) | attention (WFA learned).
        loss="infonce",               # infonce (CLIP) | siglip.
        capacity=4.0,                 # distinct captions encoded per image per step (<= max_captions): the
                                      # flat text batch; a batch with more drops its lowest-weight captions.
        caption_loss=0.0,             # weight of every encoded caption as its own text-to-image query
                                      # (each original caption alike) next to the aggregate's loss.
        lock_image=False,             # LiT: freeze the image tower (e.g. after init_from a DINO release).
        repeat_fraction=0.4,          # simulator captions: share of an image's captions repeating another.
    )
    c.optim = dict(
        base_lr=5e-4,                 # per 256 examples (lr = base_lr * batch_size / 256).
        min_lr=1e-6,                  # end of the cosine.
        warmup_examples=0,            # linear lr warm-up; set per recipe (DINO: 10 epochs).
        weight_decay=0.04,            # cosine 0.04 -> 0.4 (DINO); only on matrices.
        weight_decay_end=0.4,
        clip_grad=3.0,                # per-tensor L2 clip (DINO), not global-norm; 0 disables.
        freeze_last_layer_examples=0,  # prototypes frozen at the start (DINO: 1 epoch).
        b1=0.9,
        b2=0.999,
    )
    c.schedules = dict(               # cosine (DINO) | wsd (warmup-stable-decay, MiniCPM arXiv 2404.06395).
        lr="cosine",
        weight_decay="cosine",
        teacher_momentum="cosine",
        decay_fraction=0.2,           # wsd: last share of the budget spent decaying.
        decay_shape="1-sqrt",         # wsd: cosine | linear | 1-sqrt.
    )
    return c


# DINOv2's objective as a patch of a DINO recipe: DINO CLS + iBOT patches (shared head) + KoLeo (arXiv 2304.07193).
DINOV2 = {"ibot": {"weight": 1.0}, "dino": {"koleo_weight": 0.1}}


def dinov2_objective(c: ml_collections.ConfigDict) -> None:
    """Turns a recipe's objective into DINOv2's (`DINOV2`)."""
    for block, values in DINOV2.items():
        c[block].update(values)
