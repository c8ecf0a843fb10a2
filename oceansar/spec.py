"""The run's schema: one typed, frozen spec per config block, built from the config and validated once.

A recipe (`configs/*.py`) is an ml_collections ConfigDict; the library never reads it field by field.
`RunSpec.from_config(config)` turns each block into its dataclass (`DataSpec`, `ModelSpec`, the crops'
`augment.MultiCropSpec`, `DinoSpec`, `IbotSpec`, `OptimSpec`, `ScheduleSpec`, `PruningSpec`, one `EvalSpec` per
named evaluator), refusing a missing or unknown field and any invalid value with a message that names
the field (`config.pruning.rho: ...`), before anything is built or compiled. Defaults live only in
`configs/`: no field here has one. Cross-block rules (crop sizes against the patch size, batch sizes against the
devices) are checked by `RunSpec.check`.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from oceansar import masking
from oceansar.augment import MultiCropSpec
from oceansar.data.duplication import SCHEMES as DUPLICATION_SCHEMES
from oceansar.data.safe import POLARISATIONS as SAFE_POLARISATIONS
from oceansar.errors import ConfigError
from oceansar.models.backbone import describe
from oceansar.models.vit import _SIZES as VIT_SIZES
from oceansar.models.vit import ATTENTION

SOURCES = ("synthetic_wv", "folder", "wv_files", "tfds", "captions", "safe")
EVAL_SOURCES = ("synthetic_wv", "folder", "tfds", "opensarship", "captions", "safe")
PROBES = ("knn", "linear", "regression")
IMAGE_TEXT_PROBES = ("retrieval", "zero_shot")  # image-text runs: the text tower takes part
FEATURES = ("cls", "cls+mean_patch")
PRUNING_FEATURES = FEATURES + ("copy_descriptors",)
DTYPES = ("float32", "bfloat16", "float16")
CENTERINGS = ("ema", "sinkhorn_knopp")
AGGREGATIONS = ("single", "mean", "bleu", "attention")
TEXT_LOSSES = ("infonce", "siglip")
SCHEDULES = ("cosine", "wsd")
DECAY_SHAPES = ("cosine", "linear", "1-sqrt")
SUBSET_POLICIES = ("none", "random", "static", "cluster_balanced")
LOSS_RULES = ("infobatch",)
POLICIES = SUBSET_POLICIES + LOSS_RULES + tuple(f"{s}+{r}" for s in SUBSET_POLICIES[1:] for r in LOSS_RULES)
# Top-level blocks that belong to an application (`--mode=compare`), not to a training run.
APP_BLOCKS = ("compare",)
REMAT = ("none", "dots_saveable", "full")
FINETUNE_TASKS = ("classification", "regression")
FINETUNE_MODES = ("full", "linear")


def _require(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {why}")


def _coerce(value: Any, annotation: str) -> Any:
    """Config values to the spec's field type: lists to tuples, ints to floats where a float is meant."""
    if annotation.startswith("tuple"):
        inner = annotation[len("tuple["):-1].split(",")[0].strip() if "[" in annotation else ""
        return tuple(_coerce(v, inner) for v in value)
    if annotation == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls, block: Any, path: str):
    """`cls` (a frozen dataclass) from the config block at `config.<path>`.

    Raises:
      ConfigError: naming `config.<path>.<field>` for a missing, unknown or invalid field.
    """
    where = f"config.{path}." if path else "config."
    if not isinstance(block, Mapping) and not hasattr(block, "keys"):
        raise ConfigError(f"{where[:-1]}: expected a block of fields, got {type(block).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
             for f in dataclasses.fields(cls)}
    given = list(block.keys())
    for key in given:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            raise ConfigError(f"{where}{key}: unknown field"
                             + (f"; did you mean {', '.join(close)}?" if close else f"; known: {names}"))
    for name in names:
        if name not in given:
            raise ConfigError(f"{where}{name}: missing (every default lives in configs/)")
    values = {name: build(_NESTED[hints[name]], block[name], f"{path}.{name}") if hints[name] in _NESTED
              else _coerce(block[name], hints[name]) for name in names}
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"{where}{e}") from None


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """A heavy-tailed pool with near-duplicate bursts built from a labelled source (`config.data.pool_transform`)."""

    enabled: bool
    zipf: float                      # class shares proportional to 1 / rank^zipf (random class order)
    class_shares: tuple[float, ...]  # explicit shares instead of Zipf, one per class
    num_originals: int               # distinct originals; 0 = as many as the class shares allow
    burst_fraction: float            # fraction of originals that come with near-duplicate copies
    copies: tuple[int, ...]          # (min, max) members of a burst, the original included
    crop: tuple[float, ...]          # side fraction of a copy's random crop
    brightness: tuple[float, ...]    # multiplicative brightness of a copy
    degradation: str                 # jpeg | speckle | none
    jpeg_quality: tuple[int, ...]
    looks: float                     # speckle: looks of the gamma noise
    seed: int

    def __post_init__(self):
        _require(self.zipf >= 0, "zipf", "must be >= 0")
        _require(self.num_originals >= 0, "num_originals", "must be >= 0")
        _require(0 <= self.burst_fraction <= 1, "burst_fraction", "must be in [0, 1]")
        _require(len(self.copies) == 2 and 2 <= self.copies[0] <= self.copies[1], "copies",
                 f"must be (min, max) with 2 <= min <= max, got {self.copies}")
        for name in ("crop", "brightness"):
            lo_hi = getattr(self, name)
            _require(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], name, f"must be (lo, hi), got {lo_hi}")
        _require(self.crop[1] <= 1, "crop", "side fractions must be <= 1")
        _require(self.degradation in ("jpeg", "speckle", "none"), "degradation",
                 f"{self.degradation!r} is not jpeg, speckle or none")
        _require(len(self.jpeg_quality) == 2 and 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100,
                 "jpeg_quality", f"must be (lo, hi) in [1, 100], got {self.jpeg_quality}")
        _require(self.looks > 0, "looks", "must be > 0")


@dataclasses.dataclass(frozen=True)
class DuplicationSpec:
    """Controlled duplication of a base subset (`config.data.duplication`; `data.duplication.DuplicatedPool`)."""

    scheme: str                      # none | subset | uniform | exponential
    base_fraction: float             # the base subset, a fraction of the pool
    copies: float                    # mean members per original, the original included
    skew: float                      # exponential: multiplicities proportional to exp(-skew rank / n)
    seed: int

    def __post_init__(self):
        _require(self.scheme in DUPLICATION_SCHEMES, "scheme",
                 f"{self.scheme!r} is not one of {DUPLICATION_SCHEMES}")
        _require(0 < self.base_fraction <= 1, "base_fraction", f"must be in (0, 1], got {self.base_fraction}")
        _require(self.copies >= 1, "copies", f"must be >= 1, got {self.copies}")
        _require(self.skew >= 0, "skew", f"must be >= 0, got {self.skew}")


@dataclasses.dataclass(frozen=True)
class SafeSpec:
    """How Sentinel-1 SAFE products become records (`config.data.safe`; `data.safe.SafeSource`)."""

    pixel_spacing: float             # m: the measurement multilooked (intensity block average) to this spacing
    tile_size: int                   # multilooked px per square tile; 0 = one record per measurement file
    polarisations: tuple[str, ...]   # of hh | hv | vh | vv; () = all
    thermal_noise: bool              # subtract the noise LUTs before calibrating
    db_range: tuple[float, ...]      # (lo, hi) sigma0 dB mapped onto 0..255
    verify_checksums: bool           # MD5 of every file read against manifest.safe, at construction

    def __post_init__(self):
        _require(self.pixel_spacing > 0, "pixel_spacing", f"must be positive, got {self.pixel_spacing}")
        _require(self.tile_size >= 0, "tile_size", f"must be >= 0 (0: whole files), got {self.tile_size}")
        _require(all(p in SAFE_POLARISATIONS for p in self.polarisations), "polarisations",
                 f"{self.polarisations} must be of {SAFE_POLARISATIONS}")
        _require(len(self.db_range) == 2 and self.db_range[0] < self.db_range[1], "db_range",
                 f"must be (lo, hi) with lo < hi, got {self.db_range}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The pretraining pool (`config.data`)."""

    source: str                # synthetic_wv | folder | wv_files | tfds | captions | safe
    num_samples: int           # simulator pool size
    image_size: int            # px
    class_frequencies: tuple[float, ...]
    burst_length: int
    burst_jitter: float
    root: str
    labels_csv: str
    tfds_name: str
    tfds_split: str
    skip_corrupt: bool
    mean: float                # input standardisation of uint8 / 255 pixels
    std: float
    worker_count: int          # Grain worker processes; -1 = one per usable core less one (at most 32)
    cache: bool
    pool_transform: PoolSpec   # a redundant, heavy-tailed pool over a labelled source
    duplication: DuplicationSpec  # a base subset with controlled duplication (its copies made as pool_transform's)
    captions: str              # the captions source's JSON (UCM-captions or Karpathy layout); "" = <root>/captions.json
    split: str                 # the captions source's split
    safe: SafeSpec             # the safe source's calibration, multilook and tiling

    def __post_init__(self):
        _require(self.source in SOURCES, "source", f"unknown source {self.source!r}; known: {SOURCES}")
        _require(self.image_size > 0, "image_size", f"must be positive, got {self.image_size}")
        _require(self.std > 0, "std", f"must be positive, got {self.std}")
        _require(self.worker_count >= -1, "worker_count",
                 f"must be >= 0, or -1 for one per usable core less one, got {self.worker_count}")
        if self.source == "synthetic_wv":
            _require(self.num_samples > 0, "num_samples", f"must be positive, got {self.num_samples}")
        if self.source in ("folder", "wv_files", "safe"):
            _require(bool(self.root), "root", f"the {self.source} source needs a directory")
        if self.source == "tfds":
            _require(bool(self.tfds_name), "tfds_name", "the tfds source needs a dataset name")
        if self.source == "captions":
            _require(bool(self.root), "root", "the captions source needs its image directory")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The student/teacher architecture (`config.model`)."""

    variant: str               # ViT variant string, e.g. S/16, mu/8, or a ResNet's, R50
    in_channels: int
    drop_path_rate: float
    layer_scale: float         # LayerScale init (DINOv2, arXiv 2103.17239); 0 = none
    remat: str                 # none | dots_saveable | full: what each block keeps for the backward pass
    attention: str             # xla | cudnn: jax.nn.dot_product_attention's implementation
    out_dim: int               # DINO prototypes K
    hidden_dim: int
    bottleneck_dim: int
    norm_last_layer: bool
    dtype: str                 # compute dtype

    def __post_init__(self):
        try:
            kind = describe(self.variant)["kind"]
        except ValueError as e:  # its message starts "model.variant: ..."; `build` adds "config.model."
            raise ValueError(str(e).removeprefix("model.")) from None
        if kind == "resnet":
            for name, default in (("drop_path_rate", 0.0), ("layer_scale", 0.0), ("remat", "none"),
                                  ("attention", "xla")):
                _require(getattr(self, name) == default, name,
                         f"{getattr(self, name)!r} is a ViT option; the ResNet {self.variant!r} takes {default!r}")
        for name in ("in_channels", "out_dim", "hidden_dim", "bottleneck_dim"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(0 <= self.drop_path_rate < 1, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        _require(self.layer_scale >= 0, "layer_scale", f"must be >= 0 (0 = no LayerScale), got {self.layer_scale}")
        _require(self.remat in REMAT, "remat", f"{self.remat!r} is not one of {REMAT}")
        _require(self.dtype in DTYPES, "dtype", f"{self.dtype!r} is not one of {DTYPES}")
        _require(self.attention in ATTENTION, "attention", f"{self.attention!r} is not one of {ATTENTION}")
        _require(self.attention != "cudnn" or self.dtype != "float32", "attention",
                 "cuDNN's flash attention computes in bfloat16 or float16: set model.dtype")

    @property
    def patch(self) -> int:
        """The ViT's patch size; a ResNet's output stride (crops are multiples of it)."""
        return describe(self.variant)["patch"]

    @property
    def kind(self) -> str:
        """The backbone family: "vit" or "resnet"."""
        return describe(self.variant)["kind"]


@dataclasses.dataclass(frozen=True)
class DinoSpec:
    """The image-level objective (`config.dino`): DINO's CLS loss (arXiv 2104.14294) and DINOv2's KoLeo."""

    student_temp: float
    teacher_temp: float
    warmup_teacher_temp: float
    teacher_temp_warmup_examples: int
    center_momentum: float
    teacher_momentum: float
    centering: str             # ema (DINO) | sinkhorn_knopp (DINOv2), for the CLS and the patch targets
    sinkhorn_iterations: int
    koleo_weight: float        # DINOv2: 0.1; 0 = off

    def __post_init__(self):
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            _require(getattr(self, name) > 0, name, "must be > 0")
        for name in ("center_momentum", "teacher_momentum"):
            _require(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        _require(self.teacher_temp_warmup_examples >= 0, "teacher_temp_warmup_examples", "must be >= 0")
        _require(self.centering in CENTERINGS, "centering", f"{self.centering!r} is not one of {CENTERINGS}")
        _require(self.sinkhorn_iterations >= 1, "sinkhorn_iterations", "must be >= 1")
        _require(self.koleo_weight >= 0, "koleo_weight", f"must be >= 0, got {self.koleo_weight}")


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """Image-text pretraining (`config.text`): a text tower, WFA caption aggregation (arXiv 2505.11121) and a
    contrastive loss; when enabled, the run trains this objective instead of DINO's."""

    enabled: bool
    size: str                  # text tower size, the ViT's vocabulary: mu, Ti, S, B, L
    vocab_size: int            # byte-level BPE trained on the training captions
    context_length: int        # tokens per caption, BOS and EOS included
    max_captions: int          # caption rows per image (m)
    embed_dim: int             # the joint space
    aggregation: str           # single | mean | bleu | attention
    loss: str                  # infonce (CLIP) | siglip
    capacity: float            # distinct captions the text tower encodes per image per step, on average
    caption_loss: float        # weight of the per-caption text-to-image term next to the aggregate's loss
    lock_image: bool           # LiT: the image tower and its projection frozen
    repeat_fraction: float     # simulator captions: share of an image's captions that repeat another

    def __post_init__(self):
        _require(self.size in VIT_SIZES, "size", f"{self.size!r} is not one of {tuple(VIT_SIZES)}")
        for name in ("vocab_size", "max_captions", "embed_dim"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(self.context_length >= 3, "context_length", f"must hold BOS, a token and EOS, got "
                 f"{self.context_length}")
        _require(self.aggregation in AGGREGATIONS, "aggregation", f"{self.aggregation!r} is not one of {AGGREGATIONS}")
        _require(self.loss in TEXT_LOSSES, "loss", f"{self.loss!r} is not one of {TEXT_LOSSES}")
        _require(1 <= self.capacity <= self.max_captions, "capacity",
                 f"must lie in [1, max_captions={self.max_captions}], got {self.capacity}")
        _require(self.caption_loss >= 0, "caption_loss", f"must be >= 0, got {self.caption_loss}")
        _require(0 <= self.repeat_fraction <= 1, "repeat_fraction", f"must be in [0, 1], got {self.repeat_fraction}")


@dataclasses.dataclass(frozen=True)
class IbotSpec:
    """iBOT's masked-patch objective (`config.ibot`, arXiv 2111.07832), DINOv2's second term."""

    weight: float              # lambda2 (1 in iBOT and DINOv2); 0 = off, nothing masked or computed
    mask_probability: float    # share of global crops that are masked (0.5)
    mask_ratio: tuple[float, ...]  # (lo, hi) masked fraction of a masked crop (0.1, 0.5)
    student_temp: float
    teacher_temp: float        # patch tau_t after warm-up (0.07), warmed up with dino's
    warmup_teacher_temp: float
    center_momentum: float     # iBOT's center2 EMA (ema centring only)
    separate_head: bool        # False: the DINO head also maps patches (iBOT shared_head, DINOv2 default)
    out_dim: int               # prototypes of the separate head

    def __post_init__(self):
        _require(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        _require(0 <= self.mask_probability <= 1, "mask_probability", "must be in [0, 1]")
        _require(len(self.mask_ratio) == 2 and 0 < self.mask_ratio[0] <= self.mask_ratio[1] < 1, "mask_ratio",
                 f"must be (lo, hi) with 0 < lo <= hi < 1, got {self.mask_ratio}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            _require(getattr(self, name) > 0, name, "must be > 0")
        _require(0 <= self.center_momentum <= 1, "center_momentum", "must be in [0, 1]")
        _require(self.out_dim > 0, "out_dim", f"must be positive, got {self.out_dim}")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """Which schedule drives each scheduled quantity (`config.schedules`).

    cosine: DINO's (lr warm-up then cosine to min_lr; weight decay and teacher momentum cosine from start to end).
    wsd: warmup-stable-decay (MiniCPM, arXiv 2404.06395; Less-is-More's choice): the lr warms up to its peak,
    weight decay and momentum hold their start values; all hold until the last `decay_fraction` of the budget,
    then move to their end values along `decay_shape`.
    """

    lr: str                    # cosine | wsd
    weight_decay: str
    teacher_momentum: str
    decay_fraction: float      # wsd: share of the budget spent decaying (MiniCPM: about 0.1)
    decay_shape: str           # wsd: cosine | linear | 1-sqrt

    def __post_init__(self):
        for name in ("lr", "weight_decay", "teacher_momentum"):
            _require(getattr(self, name) in SCHEDULES, name, f"{getattr(self, name)!r} is not one of {SCHEDULES}")
        _require(0 < self.decay_fraction <= 1, "decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")
        _require(self.decay_shape in DECAY_SHAPES, "decay_shape",
                 f"{self.decay_shape!r} is not one of {DECAY_SHAPES}")


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """AdamW and its schedules (`config.optim`); lr per 256 examples."""

    base_lr: float
    min_lr: float
    warmup_examples: int
    weight_decay: float
    weight_decay_end: float
    clip_grad: float
    freeze_last_layer_examples: int
    b1: float
    b2: float

    def __post_init__(self):
        for name in ("base_lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "warmup_examples",
                     "freeze_last_layer_examples"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("b1", "b2"):
            _require(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class PruningSpec:
    """What each epoch trains on (`config.pruning`): a subset policy, optionally a loss rule inside it."""

    policy: str                # see POLICIES
    rho: float                 # kept fraction of subset policies
    selection: str             # static: a --mode=curate workdir
    eta: float                 # within-leaf diversity knob (OceanSAR-1)
    warmup_examples: int       # T_w
    every_epochs: int          # T_s
    subset_size: int           # M, embedded per re-clustering (0 = all)
    n_clusters: tuple[int, ...]  # () = sized from the clustered set (policies.CLUSTER_DIVISORS)
    n_resamples: int
    prune_ratio: float         # InfoBatch r
    delta: float               # InfoBatch annealing point, fraction of the budget
    loss_stats_momentum: float
    embed_batch_size: int      # global batch of the teacher's re-embedding
    features: str              # what a re-clustering clusters: the teacher's cls | cls+mean_patch, or the
                               # model-free copy_descriptors (curation.copies)
    whiten: bool               # PCA-whiten the embedded features before clustering
    copy_dedup_eps: float      # > 0: drop near-copies (copy-descriptor cosine > 1 - eps) before clustering

    def __post_init__(self):
        _require(self.policy in POLICIES, "policy", f"unknown policy {self.policy!r}; known: {POLICIES}")
        if self.subset == "static":
            _require(bool(self.selection), "selection", "the static policy needs a --mode=curate workdir")
        _require(0 < self.rho <= 1, "rho", f"must be in (0, 1], got {self.rho}")
        _require(0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")
        _require(0 <= self.prune_ratio < 1, "prune_ratio", f"must be in [0, 1), got {self.prune_ratio}")
        _require(0 <= self.delta <= 1, "delta", f"must be in [0, 1], got {self.delta}")
        _require(self.every_epochs >= 1, "every_epochs", "must be >= 1")
        _require(self.warmup_examples >= 0, "warmup_examples", "must be >= 0")
        _require(self.subset_size >= 0, "subset_size", "must be >= 0")
        _require(all(k >= 1 for k in self.n_clusters), "n_clusters",
                 f"must be positive cluster counts (or () for N/20, N/200 of the clustered set), got {self.n_clusters}")
        _require(self.n_resamples >= 0, "n_resamples", "must be >= 0")
        _require(0 <= self.loss_stats_momentum < 1, "loss_stats_momentum", "must be in [0, 1)")
        _require(self.embed_batch_size > 0, "embed_batch_size", "must be positive")
        _require(self.features in PRUNING_FEATURES, "features",
                 f"{self.features!r} is not one of {PRUNING_FEATURES}")
        _require(0 <= self.copy_dedup_eps < 1, "copy_dedup_eps", f"must be in [0, 1), got {self.copy_dedup_eps}")

    @property
    def subset(self) -> str:
        """The subset policy: `"cluster_balanced+infobatch"` -> `"cluster_balanced"`, `"infobatch"` -> `"none"`."""
        return "none" if self.policy in LOSS_RULES else self.policy.partition("+")[0]

    @property
    def rule(self) -> str | None:
        """The loss rule applied inside the subset, if any."""
        return self.policy if self.policy in LOSS_RULES else (self.policy.partition("+")[2] or None)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One named frozen-feature evaluator (`config.evals.<name>`): a labelled dataset and its probes."""

    source: str                # synthetic_wv (balanced splits, disjoint seeds) | folder | tfds | opensarship
    root: str                  # folder: <root>/{train,test}/<class>/*; tfds: data_dir; opensarship: the release
    tfds_name: str
    train_split: str
    test_split: str
    num_train_per_class: int   # synthetic_wv split sizes
    num_test_per_class: int
    probes: tuple[str, ...]    # knn | linear | regression, or (image-text runs) retrieval | zero_shot
    targets: tuple[str, ...]   # regression targets (record fields) for the regression probe
    knn_ks: tuple[int, ...]
    every_examples: int        # 0: only at the end
    features: str              # cls | cls+mean_patch
    batch_size: int
    n_bootstrap: int

    def __post_init__(self):
        _require(self.source in EVAL_SOURCES, "source", f"unknown source {self.source!r}; known: {EVAL_SOURCES}")
        if self.source == "folder":
            _require(bool(self.root), "root", "the folder evaluator needs <root>/{train,test}/<class>/")
        if self.source == "opensarship":
            _require(bool(self.root), "root", "the opensarship evaluator needs the release's <root>/<scene>/Patch_Cal/")
        if self.source == "tfds":
            _require(bool(self.tfds_name), "tfds_name", "the tfds evaluator needs a dataset name")
        if self.source == "captions":
            _require(bool(self.root), "root", "the captions evaluator needs the UCM-captions layout's folder")
        unknown = [p for p in self.probes if p not in PROBES + IMAGE_TEXT_PROBES]
        _require(bool(self.probes) and not unknown, "probes",
                 f"unknown {unknown or 'empty'}; known: {PROBES + IMAGE_TEXT_PROBES}")
        _require(not (self.image_text and any(p in PROBES for p in self.probes)), "probes",
                 f"an evaluator runs frozen-feature probes {PROBES} or image-text ones {IMAGE_TEXT_PROBES}, "
                 f"not both: name two evaluators")
        _require(self.source != "captions" or self.image_text, "probes",
                 f"the captions evaluator runs {IMAGE_TEXT_PROBES}")
        if "regression" in self.probes:
            _require(bool(self.targets), "targets", "the regression probe needs target fields")
        _require(bool(self.knn_ks) and min(self.knn_ks) >= 1, "knn_ks", "must be positive k values")
        _require(self.every_examples >= 0, "every_examples", "must be >= 0 (0: only at the end)")
        _require(self.features in FEATURES, "features", f"{self.features!r} is not one of {FEATURES}")
        _require(self.batch_size > 0, "batch_size", "must be positive")
        _require(self.n_bootstrap >= 1, "n_bootstrap", "must be >= 1")

    @property
    def image_text(self) -> bool:
        """Whether this evaluator runs the image-text probes (retrieval, zero-shot) rather than frozen features."""
        return any(p in IMAGE_TEXT_PROBES for p in self.probes)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """The device mesh (`config.mesh`): `data` x `fsdp` axes over every device."""

    fsdp: int                  # devices a parameter is sharded over (ZeRO-3 / FSDP); 1 = pure data parallel
    fsdp_min_size: int         # tensors with fewer elements stay replicated (their all-gather costs more)

    def __post_init__(self):
        _require(self.fsdp >= 1, "fsdp", f"must be >= 1, got {self.fsdp}")
        _require(self.fsdp_min_size >= 0, "fsdp_min_size", f"must be >= 0, got {self.fsdp_min_size}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A whole training run: the top-level fields and every block."""

    name: str
    seed: int
    batch_size: int            # global
    total_examples: int        # the budget, in examples seen
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    num_devices: int           # 0 = every visible device
    progress: bool
    resume: str                # a checkpoint dir to continue from when the workdir has none
    init_from: str             # a release dir whose backbone initialises student and teacher
    eval_at_init: bool         # also evaluate the same architecture at random init
    data: DataSpec
    model: ModelSpec
    crops: MultiCropSpec
    dino: DinoSpec
    ibot: IbotSpec
    text: TextSpec
    optim: OptimSpec
    schedules: ScheduleSpec
    pruning: PruningSpec
    mesh: MeshSpec
    evals: Mapping[str, EvalSpec]

    @classmethod
    def from_config(cls, config, *, num_devices: int | None = None, process_count: int = 1,
                    platform: str | None = None) -> "RunSpec":
        """Builds and validates the spec of a recipe; with `num_devices` (and `platform`, JAX's backend),
        also against the devices."""
        blocks = {"data": DataSpec, "model": ModelSpec, "crops": MultiCropSpec, "dino": DinoSpec,
                  "ibot": IbotSpec, "text": TextSpec, "optim": OptimSpec, "schedules": ScheduleSpec,
                  "pruning": PruningSpec, "mesh": MeshSpec}
        top = {k: config[k] for k in config.keys() if k not in APP_BLOCKS}
        values = {k: build(spec_cls, top.pop(k, {}), k) if k in top else None
                  for k, spec_cls in blocks.items()}
        if "evals" not in top:
            raise ConfigError("config.evals: missing (a dict of named evaluators, may be empty)")
        values["evals"] = {name: build(EvalSpec, block, f"evals.{name}")
                           for name, block in top.pop("evals").items()}
        for k, v in values.items():
            if v is None:
                raise ConfigError(f"config.{k}: missing block")
        top = {k: v for k, v in top.items() if k not in values}
        flat = [f.name for f in dataclasses.fields(cls) if f.name not in values]
        scalars = build(_Top, top, "")  # names unknown / missing top-level fields
        spec = cls(**{n: getattr(scalars, n) for n in flat}, **values)
        spec.check(num_devices=num_devices, process_count=process_count, platform=platform)
        return spec

    @property
    def patch_prototypes(self) -> int:
        """K of the iBOT patch head: the separate head's, else the shared DINO head's."""
        return self.ibot.out_dim if self.ibot.enabled and self.ibot.separate_head else self.model.out_dim

    @property
    def patch_tokens(self) -> int:
        """Patch tokens per global crop that go through the patch head: the most a mask holds; 0 without iBOT."""
        if not self.ibot.enabled:
            return 0
        grid = self.crops.global_size // self.model.patch
        return masking.max_masked(grid * grid, self.ibot.mask_ratio)

    def check(self, *, num_devices: int | None, process_count: int = 1, platform: str | None = None) -> None:
        """Rules across blocks and against the devices; errors name the field."""
        def fail(field, why):
            raise ConfigError(f"config.{field}: {why}")

        if self.batch_size <= 0:
            fail("batch_size", f"must be positive, got {self.batch_size}")
        if self.total_examples < self.batch_size:
            fail("total_examples", f"must be at least one batch ({self.batch_size}), got {self.total_examples}")
        for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
            if getattr(self, field) <= 0:
                fail(field, "must be positive")
        patch = self.model.patch
        unit = "output stride" if self.model.kind == "resnet" else "patch size"
        for field, size in (("crops.global_size", self.crops.global_size),
                            ("crops.local_size", self.crops.local_size)):
            if size % patch:
                fail(field, f"{size} must be a positive multiple of the {unit} {patch} of {self.model.variant}")
            if size > self.data.image_size:
                fail(field, f"{size} exceeds data.image_size {self.data.image_size}")
        if self.crops.n_global != 2:
            fail("crops.n_global", "DINO uses exactly 2 global crops")
        if self.model.kind == "resnet":
            if self.ibot.enabled:
                fail("ibot.weight", f"iBOT masks patch tokens, which the ResNet {self.model.variant!r} has none of: "
                     "set ibot.weight = 0 or a ViT model.variant")
            if self.text.enabled:
                fail("text.enabled", f"the image tower of an image-text run is a ViT, not {self.model.variant!r}")
        if self.text.enabled:
            if self.data.source not in ("captions", "synthetic_wv"):
                fail("text.enabled", f"image-text runs read the captions source or the simulator's generated "
                     f"captions, not data.source={self.data.source!r}")
            if self.data.pool_transform.enabled or self.data.duplication.scheme != "none":
                fail("text.enabled", "data.pool_transform and data.duplication serve images only, no captions")
        elif self.data.source == "captions":
            fail("data.source", "the captions source feeds image-text runs: set text.enabled")
        for name, e in self.evals.items():
            if e.image_text and not self.text.enabled:
                fail(f"evals.{name}.probes", f"{e.probes} need the text tower of an image-text run (text.enabled)")
            if e.image_text and e.source not in ("captions", "synthetic_wv"):
                fail(f"evals.{name}.source", "image-text probes read the captions source or the simulator's captions")
        if platform not in (None, "gpu") and self.model.attention == "cudnn":
            fail("model.attention", f"'cudnn' needs a CUDA GPU; JAX's backend is {platform!r}: set 'xla'")
        if num_devices is None:
            return
        if num_devices % self.mesh.fsdp:
            fail("mesh.fsdp", f"{self.mesh.fsdp} does not divide the {num_devices} devices")
        batches = [("batch_size", self.batch_size), ("pruning.embed_batch_size", self.pruning.embed_batch_size)]
        batches += [(f"evals.{n}.batch_size", e.batch_size) for n, e in self.evals.items()]
        for field, size in batches:
            if size % num_devices:
                fail(field, f"{size} is not divisible by the {num_devices} devices")
        if self.batch_size % process_count:
            fail("batch_size", f"{self.batch_size} is not divisible by the {process_count} processes")


def _top_fields() -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(RunSpec)
    blocks = ("data", "model", "crops", "dino", "ibot", "text", "optim", "schedules", "pruning", "mesh", "evals")
    return [(f.name, hints[f.name]) for f in dataclasses.fields(RunSpec) if f.name not in blocks]


# The top-level scalar fields as a dataclass of their own, so `build` names the unknown and missing ones.
_Top = dataclasses.make_dataclass("_Top", _top_fields(), frozen=True)

@dataclasses.dataclass(frozen=True)
class FinetuneDataSpec:
    """The labelled dataset a network is fine-tuned on (`config.finetune.data`): the evaluators' sources."""

    source: str                # synthetic_wv | folder | tfds | opensarship (as `EvalSpec.source`)
    root: str
    tfds_name: str
    train_split: str
    test_split: str
    num_train_per_class: int   # synthetic_wv split sizes
    num_test_per_class: int
    image_size: int            # px the images are read at (a centre view resizes them to the backbone's)

    def __post_init__(self):
        _require(self.image_size > 0, "image_size", f"must be positive, got {self.image_size}")
        _require(self.source in EVAL_SOURCES and self.source != "captions", "source",
                 f"unknown source {self.source!r}; known: {tuple(s for s in EVAL_SOURCES if s != 'captions')}")
        _require(self.source in ("synthetic_wv",) or bool(self.root or self.tfds_name), "root",
                 f"the {self.source} source needs its root (tfds: tfds_name)")


@dataclasses.dataclass(frozen=True)
class FinetuneModelSpec:
    """The backbone when `init_from` is no oceansar release (`config.finetune.model`; a release brings its own)."""

    variant: str               # "" = the release's
    img_size: int
    in_channels: int
    layer_scale: float
    mean: float                # input standardisation of uint8 / 255 pixels
    std: float

    def __post_init__(self):
        if self.variant:
            try:
                patch = describe(self.variant)["patch"]
            except ValueError as e:  # its message starts "model.variant: ..."
                raise ValueError(str(e).removeprefix("model.")) from None
            _require(self.img_size > 0 and self.img_size % patch == 0, "img_size",
                     f"must be a positive multiple of the patch size {patch}, got {self.img_size}")
        _require(self.in_channels > 0, "in_channels", f"must be positive, got {self.in_channels}")
        _require(self.layer_scale >= 0, "layer_scale", f"must be >= 0, got {self.layer_scale}")
        _require(self.std > 0, "std", f"must be positive, got {self.std}")


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Supervised fine-tuning of a pretrained backbone (`config.finetune`, `--mode=finetune`)."""

    task: str                  # classification (the records' label) | regression (`targets`)
    targets: tuple[str, ...]   # regression: record fields, e.g. wind_speed, hs
    mode: str                  # full (layer-wise lr decay) | linear (backbone frozen)
    data: FinetuneDataSpec
    model: FinetuneModelSpec
    epochs: int
    batch_size: int
    lr: float                  # peak learning rate (the head's; block i of d gets lr * layer_decay^(d - i))
    min_lr: float
    warmup_epochs: int
    weight_decay: float
    layer_decay: float
    label_smoothing: float
    drop_path_rate: float
    flips: bool                # random horizontal / vertical flips (SAR and EO scenes have no up)
    eval_every_epochs: int     # 0: only at the end
    log_every_steps: int
    n_bootstrap: int

    def __post_init__(self):
        _require(self.task in FINETUNE_TASKS, "task", f"{self.task!r} is not one of {FINETUNE_TASKS}")
        _require(self.task != "regression" or bool(self.targets), "targets", "a regression needs its record fields")
        _require(self.mode in FINETUNE_MODES, "mode", f"{self.mode!r} is not one of {FINETUNE_MODES}")
        for name in ("epochs", "batch_size"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", f"must lie in [0, epochs={self.epochs})")
        _require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "lr", "need lr > 0 and 0 <= min_lr <= lr")
        _require(0 < self.layer_decay <= 1, "layer_decay", f"must lie in (0, 1], got {self.layer_decay}")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        _require(0 <= self.drop_path_rate < 1, "drop_path_rate", f"must lie in [0, 1), got {self.drop_path_rate}")
        _require(self.eval_every_epochs >= 0, "eval_every_epochs", "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("log_every_steps", "n_bootstrap"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")


# Blocks inside blocks, by the annotation that names them.
_NESTED = {"PoolSpec": PoolSpec, "DuplicationSpec": DuplicationSpec, "SafeSpec": SafeSpec,
           "FinetuneDataSpec": FinetuneDataSpec,
           "FinetuneModelSpec": FinetuneModelSpec}
