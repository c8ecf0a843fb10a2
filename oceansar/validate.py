"""Config validation: every field a run reads is checked once, before anything compiles.

Errors name the field (`config.batch_size: ...`) and say what would be valid.
"""
from __future__ import annotations

from oceansar.data.sources import SOURCES
from oceansar.models.vit import parse_variant
from oceansar.pruning.policies import POLICIES, parse_policy


def _fail(field: str, why: str):
    raise ValueError(f"config.{field}: {why}")


def validate(config, *, num_devices: int, process_count: int = 1) -> None:
    """Raises ValueError naming the first invalid field of a training config."""
    try:
        variant = parse_variant(config.model.variant)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None  # parse_variant names model.variant
    patch = variant["patch"]
    if config.batch_size <= 0:
        _fail("batch_size", f"must be positive, got {config.batch_size}")
    if config.batch_size % num_devices:
        _fail("batch_size", f"{config.batch_size} is not divisible by the {num_devices} devices")
    if config.batch_size % process_count:
        _fail("batch_size", f"{config.batch_size} is not divisible by the {process_count} processes")
    if config.total_examples < config.batch_size:
        _fail("total_examples", f"must be at least one batch ({config.batch_size}), got "
              f"{config.total_examples}")
    for field in ("warmup_examples", "freeze_last_layer_examples"):
        if getattr(config.optim, field) < 0:
            _fail(f"optim.{field}", f"must be >= 0, got {getattr(config.optim, field)}")
    if config.dino.teacher_temp_warmup_examples < 0:
        _fail("dino.teacher_temp_warmup_examples", "must be >= 0")
    for field in ("base_lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        if getattr(config.optim, field) < 0:
            _fail(f"optim.{field}", f"must be >= 0, got {getattr(config.optim, field)}")
    for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        if not getattr(config.dino, field) > 0:
            _fail(f"dino.{field}", "must be > 0")
    for field in ("center_momentum", "teacher_momentum"):
        if not 0 <= getattr(config.dino, field) <= 1:
            _fail(f"dino.{field}", "must be in [0, 1]")
    if config.data.source not in SOURCES:
        _fail("data.source", f"unknown source {config.data.source!r}; known: {SOURCES}")
    if config.data.image_size <= 0:
        _fail("data.image_size", "must be positive")
    if config.data.std <= 0:
        _fail("data.std", "must be positive")
    c = config.crops
    for field, size in (("crops.global_size", c.global_size), ("crops.local_size", c.local_size)):
        if size <= 0 or size % patch:
            _fail(field, f"{size} must be a positive multiple of the patch size {patch} of "
                  f"{config.model.variant}")
        if size > config.data.image_size:
            _fail(field, f"{size} exceeds data.image_size {config.data.image_size}")
    if c.n_global != 2:
        _fail("crops.n_global", "DINO uses exactly 2 global crops")
    if c.n_local < 0:
        _fail("crops.n_local", "must be >= 0")
    for field in ("global_scale", "local_scale"):
        lo, hi = getattr(c, field)
        if not 0 < lo <= hi <= 1:
            _fail(f"crops.{field}", f"({lo}, {hi}) must satisfy 0 < lo <= hi <= 1")
    if config.model.out_dim <= 0 or config.model.in_channels <= 0:
        _fail("model.out_dim", "out_dim and in_channels must be positive")
    if config.model.dtype not in ("float32", "bfloat16", "float16"):
        _fail("model.dtype", f"{config.model.dtype!r} is not float32, bfloat16 or float16")
    if config.pruning.policy not in POLICIES:
        _fail("pruning.policy", f"unknown policy {config.pruning.policy!r}; known: {POLICIES}")
    if parse_policy(config.pruning.policy)[0] == "static" and not config.pruning.selection:
        _fail("pruning.selection", "the static policy needs a --mode=curate workdir")
    if not 0 <= config.pruning.prune_ratio < 1:
        _fail("pruning.prune_ratio", f"must be in [0, 1), got {config.pruning.prune_ratio}")
    if not 0 <= config.pruning.delta <= 1:
        _fail("pruning.delta", f"must be in [0, 1], got {config.pruning.delta}")
    if not 0 <= config.pruning.eta <= 1:
        _fail("pruning.eta", f"must be in [0, 1], got {config.pruning.eta}")
    if config.pruning.every_epochs < 1:
        _fail("pruning.every_epochs", "must be >= 1")
    if config.pruning.warmup_examples < 0 or config.pruning.subset_size < 0:
        _fail("pruning.warmup_examples", "warmup_examples and subset_size must be >= 0")
    if not config.pruning.n_clusters or min(config.pruning.n_clusters) < 1:
        _fail("pruning.n_clusters", f"must be positive cluster counts, got {config.pruning.n_clusters}")
    if not 0 < config.pruning.rho <= 1:
        _fail("pruning.rho", f"must be in (0, 1], got {config.pruning.rho}")
    if not 0 <= config.pruning.loss_stats_momentum < 1:
        _fail("pruning.loss_stats_momentum", "must be in [0, 1)")
    if config.eval.features not in ("cls", "cls+mean_patch"):
        _fail("eval.features", f"{config.eval.features!r} is not cls or cls+mean_patch")
    if config.eval.every_examples < 0:
        _fail("eval.every_examples", "must be >= 0 (0: only at the end)")
    for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if getattr(config, field) <= 0:
            _fail(field, "must be positive")
