"""On-device multi-crop augmentation for DINO on SAR: random-resized crops, flips/rot90, SAR-aware jitter, blur.

Everything runs jitted on the (sharded) batch with per-sample randomness drawn as [n_crops, B] arrays, so there is no
Python loop over samples and the host only decodes. A crop is a separable resampling: per (crop, sample) two
interpolation matrices [out, H] and [out, W] (antialiased bicubic or bilinear, the kernel of `jax.image.resize`) are
built from the sampled box, flips are folded into them, and the crop is `Wy @ image @ Wx^T`. Rot90 on square crops is
a transpose selected per sample. Photometric jitter adapts DINO's (arXiv 2104.14294) to SAR: brightness becomes an
additive dB offset, contrast a scale around the crop mean; an RGB input (optical images: UC Merced) also gets DINO's
saturation jitter and random grayscale, which keep a network from matching views by their colour histogram; hue and
solarize are dropped. Gaussian blur is kept (folded into the resampling matrices). Inputs are float images already
standardised (zero-mean, unit-std dB-like); uint8 decoding and standardisation happen before, iBOT's masks in
`masking.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

_INTERPOLATIONS = ("bicubic", "bilinear")
_MAX_TRIES = 10  # torchvision RandomResizedCrop's attempts before the centre-crop fallback
# Uniforms per (crop, sample): box tries (area, ratio), box offsets (y, x), hflip, vflip, rot90, jitter, offset,
# contrast, blur, sigma.
_N_UNIFORMS = 2 * _MAX_TRIES + 10


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiCropSpec:
    """Static description of DINO multi-crop (`config.crops`); hashable, so it can be a static jit argument.

    No field has a default: the recipes in `configs/` hold them.

    Attributes:
        global_size: side of the square global crops (224 in DINO).
        local_size: side of the square local crops (96).
        n_local: number of local crops (8 in DINO, 10 in iBOT); may be 0.
        n_global: number of global crops (2).
        global_scale: range of the crop area as a fraction of the image area, global crops.
        local_scale: same for local crops.
        ratio: range of the crop aspect ratio w/h, sampled log-uniformly.
        interpolation: "bicubic" (DINO) or "bilinear"; antialiased when shrinking.
        flip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip (fine for wind speed and Hs, not for wind direction).
        rot90: rotate each crop by a uniform multiple of 90 degrees.
        jitter_p: probability that a crop gets the photometric jitter (DINO's colour jitter p=0.8).
        db_offset: the additive offset is uniform in [-db_offset, db_offset], in standardised units.
        contrast: range of the contrast factor c in mean + c * (x - mean), mean per crop and channel.
        blur_p_global: blur probability of each global crop (DINO: 1.0 for the first, 0.1 for the second).
        blur_p_local: blur probability of each local crop.
        blur_sigma: range of the Gaussian blur std, in pixels of the output crop.
        saturation: RGB input only: range of the factor s in luma + s * (x - luma), part of the jitter (DINO's
            saturation 0.4: (0.6, 1.4)).
        grayscale_p: RGB input only: probability that a crop becomes its luma in every channel (DINO's 0.2).
    """

    global_size: int
    local_size: int
    n_local: int
    n_global: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    flip_p: float
    vflip_p: float
    rot90: bool
    jitter_p: float
    db_offset: float
    contrast: tuple[float, float]
    blur_p_global: tuple[float, ...]
    blur_p_local: float
    blur_sigma: tuple[float, float]
    saturation: tuple[float, float]
    grayscale_p: float

    def __post_init__(self):
        # Configs hand over lists; tuples keep the spec hashable (a static jit argument).
        for field in ("global_scale", "local_scale", "ratio", "contrast", "blur_p_global", "blur_sigma",
                      "saturation"):
            object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))

        def fail(field, why):
            raise ValueError(f"{field}: {why}, got {getattr(self, field)!r}")

        for field in ("global_size", "local_size", "n_global"):
            if int(getattr(self, field)) < 1:
                fail(field, "must be >= 1")
        if int(self.n_local) < 0:
            fail("n_local", "must be >= 0")
        for field in ("global_scale", "local_scale", "ratio", "contrast", "blur_sigma"):
            value = getattr(self, field)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                fail(field, "must be a pair (lo, hi) with 0 < lo <= hi")
        for field in ("global_scale", "local_scale"):
            if getattr(self, field)[1] > 1:
                fail(field, "area fractions must be <= 1")
        if self.interpolation not in _INTERPOLATIONS:
            fail("interpolation", f"must be one of {_INTERPOLATIONS}")
        if len(self.blur_p_global) != self.n_global:
            fail("blur_p_global", f"needs one probability per global crop (n_global={self.n_global})")
        if len(self.saturation) != 2 or not 0 <= self.saturation[0] <= self.saturation[1]:
            fail("saturation", "must be a pair (lo, hi) with 0 <= lo <= hi")
        for field in ("flip_p", "vflip_p", "jitter_p", "blur_p_local", "grayscale_p"):
            if not 0 <= getattr(self, field) <= 1:
                fail(field, "must be a probability in [0, 1]")
        if not all(0 <= p <= 1 for p in self.blur_p_global):
            fail("blur_p_global", "must hold probabilities in [0, 1]")
        if self.db_offset < 0:
            fail("db_offset", "must be >= 0")


def _kernel(d: jax.Array, interpolation: str) -> jax.Array:
    """Interpolation kernel at |distance| d: Keys cubic (a = -0.5) or triangle, as jax.image.resize."""
    if interpolation == "bilinear":
        return jnp.maximum(0.0, 1.0 - d)
    return jnp.where(d < 1.0, ((1.5 * d - 2.5) * d) * d + 1.0,
                     jnp.where(d < 2.0, ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0, 0.0))


def _resample_matrix(start: jax.Array, length: jax.Array, flip: jax.Array, in_size: int, out_size: int,
                     interpolation: str) -> jax.Array:
    """Interpolation weights [..., out_size, in_size] mapping the interval [start, start + length) onto out_size.

    Coordinates are continuous with pixel j covering [j, j + 1). When shrinking, the kernel is widened by the
    shrink factor (antialiasing); each row is normalised over the pixels inside the image, as jax.image.resize does.
    """
    scale = (length / out_size)[..., None]
    pos = start[..., None] + (jnp.arange(out_size) + 0.5) * scale
    pos = jnp.where(flip[..., None], jnp.flip(pos, axis=-1), pos)
    width = jnp.maximum(scale, 1.0)[..., None]
    d = jnp.abs(pos[..., None] - (jnp.arange(in_size) + 0.5)) / width
    w = _kernel(d, interpolation)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def _resample(images: jax.Array, wy: jax.Array, wx: jax.Array) -> jax.Array:
    """[B, H, W, C] images, [n, B, S, H] and [n, B, S, W] weights -> [n, B, S, S, C] crops."""
    rows = jnp.einsum("nbsh,bhwc->nbswc", wy, images)
    return jnp.einsum("nbswc,nbtw->nbstc", rows, wx)


def _sample_boxes(u: jax.Array, height: int, width: int, scale: tuple[float, float],
                  ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision RandomResizedCrop box sampling, vectorised: 10 tries, first valid one, else centre fallback.

    Args:
        u: [..., 2 * _MAX_TRIES + 2] uniforms in [0, 1).

    Returns:
        y0, x0, h, w, each of shape u.shape[:-1], in continuous pixel units.
    """
    u_area, u_ratio, u_y, u_x = (u[..., :_MAX_TRIES], u[..., _MAX_TRIES:2 * _MAX_TRIES], u[..., -2], u[..., -1])
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w_try, h_try = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
    ok = (w_try <= width) & (h_try <= height)
    first = jnp.argmax(ok, axis=-1)[..., None]
    found = jnp.any(ok, axis=-1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        fb_w, fb_h = height * ratio[1], height
    else:
        fb_w, fb_h = width, height
    w = jnp.where(found, jnp.take_along_axis(w_try, first, axis=-1)[..., 0], fb_w)
    h = jnp.where(found, jnp.take_along_axis(h_try, first, axis=-1)[..., 0], fb_h)
    return u_y * (height - h), u_x * (width - w), h, w


def _blur_matrix(sigma: jax.Array, enabled: jax.Array, size: int, radius: int) -> jax.Array:
    """[..., size, size] matrix of a Gaussian blur (taps within `radius`) with reflect padding, torchvision's border.

    Row i holds the weight of each source pixel j in output pixel i; the identity where `enabled` is False.
    Requires radius <= size - 1 so that one reflection at each border suffices.
    """
    i = jnp.arange(size)[:, None]
    j = jnp.arange(size)[None, :]
    s2 = (2.0 * sigma**2)[..., None, None]

    def tap(d, valid):
        return jnp.where(valid & (jnp.abs(d) <= radius), jnp.exp(-(d**2) / s2), 0.0)

    # Source j is read directly (offset j - i), through the top/left reflection (-j, for j >= 1) and through the
    # bottom/right one (2 (size - 1) - j, for j <= size - 2).
    m = tap(j - i, True) + tap(-j - i, j >= 1) + tap(2 * (size - 1) - j - i, j <= size - 2)
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    norm = jnp.sum(jnp.exp(-(t**2) / s2[..., 0]), axis=-1)[..., None, None]
    return jnp.where(enabled[..., None, None], m / norm, jnp.eye(size, dtype=jnp.float32))


def _crop_stack(u: jax.Array, images: jax.Array, size: int, scale: tuple[float, float], blur_p: jax.Array,
                spec: MultiCropSpec, u_colour: jax.Array | None) -> jax.Array:
    """Augmented square crops of every image, [n, B, size, size, C], from uniforms u [n, B, _N_UNIFORMS] (and, for
    RGB, u_colour [n, B, 2]: saturation, grayscale)."""
    n, b = u.shape[:2]
    height, width = images.shape[1:3]
    y0, x0, h, w = _sample_boxes(u[..., :2 * _MAX_TRIES + 2], height, width, scale, spec.ratio)
    u_hflip, u_vflip, u_rot, u_jitter, u_offset, u_factor, u_blur, u_sigma = jnp.moveaxis(
        u[..., 2 * _MAX_TRIES + 2:], -1, 0)
    hflip, vflip = u_hflip < spec.flip_p, u_vflip < spec.vflip_p
    k = jnp.floor(4 * u_rot).astype(jnp.int32) if spec.rot90 else jnp.zeros((n, b), jnp.int32)
    # rot90 by k (counter-clockwise, np.rot90) after the flips equals: flip rows by fy and columns by fx in crop
    # coordinates, then transpose when k is odd. rot90(x, k) = flip(transpose^(k odd)(x), rows: k in {1, 2},
    # columns: k in {2, 3}), and transposing swaps which flip acts on rows.
    odd = (k % 2) == 1
    rot_rows, rot_cols = (k == 1) | (k == 2), (k == 2) | (k == 3)
    fy = jnp.where(odd, vflip ^ rot_cols, vflip ^ rot_rows)
    fx = jnp.where(odd, hflip ^ rot_rows, hflip ^ rot_cols)
    wy = _resample_matrix(y0, h, fy, height, size, spec.interpolation)
    wx = _resample_matrix(x0, w, fx, width, size, spec.interpolation)
    # Three sigmas of the widest blur, capped so one reflection at each border suffices.
    radius = min(math.ceil(3 * spec.blur_sigma[1]), size - 1)
    if radius > 0:
        # The blur is linear, separable and flip-symmetric, so it folds into the resampling matrices: no extra pass
        # over the crops, and far less to compile than a per-tap loop. DINO blurs after the colour jitter; the affine
        # jitter commutes with a normalised blur except for the reflect border's effect on the crop mean.
        sigma = spec.blur_sigma[0] + (spec.blur_sigma[1] - spec.blur_sigma[0]) * u_sigma
        blur = _blur_matrix(sigma, u_blur < blur_p[:, None], size, radius)
        wy = jnp.einsum("nbij,nbjh->nbih", blur, wy)
        wx = jnp.einsum("nbij,nbjw->nbiw", blur, wx)
    crops = _resample(images, wy, wx)
    crops = jnp.where(odd[..., None, None, None], jnp.swapaxes(crops, 2, 3), crops)

    jitter = (u_jitter < spec.jitter_p)[..., None, None, None]
    offset = spec.db_offset * (2 * u_offset - 1)
    factor = spec.contrast[0] + (spec.contrast[1] - spec.contrast[0]) * u_factor
    mean = jnp.mean(crops, axis=(2, 3), keepdims=True)
    jittered = mean + factor[..., None, None, None] * (crops - mean) + offset[..., None, None, None]
    if u_colour is not None:
        # Standardisation is one affine map for every channel, so the luma of standardised pixels is the
        # standardised luma.
        saturation = spec.saturation[0] + (spec.saturation[1] - spec.saturation[0]) * u_colour[..., 0]
        luma = _luma(jittered)
        jittered = luma + saturation[..., None, None, None] * (jittered - luma)
    crops = jnp.where(jitter, jittered, crops)
    if u_colour is not None:
        crops = jnp.where((u_colour[..., 1] < spec.grayscale_p)[..., None, None, None],
                          jnp.broadcast_to(_luma(crops), crops.shape), crops)
    return crops


def _luma(rgb: jax.Array) -> jax.Array:
    """ITU-R BT.601 luma of [..., 3] pixels, [..., 1] (torchvision's `rgb_to_grayscale`)."""
    return jnp.tensordot(rgb, jnp.asarray([0.299, 0.587, 0.114], rgb.dtype), axes=1)[..., None]


def _check_images(images: jax.Array, where: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be [B, H, W, C], got shape {images.shape}")


@functools.partial(jax.jit, static_argnames=("spec",))
def multicrop(key: jax.Array, images: jax.Array, spec: MultiCropSpec) -> tuple[jax.Array, jax.Array]:
    """DINO multi-crop of a batch, deterministic for a given key.

    Args:
        key: PRNG key (e.g. `fold_in(rng, step)`); every crop of every sample draws its own parameters from it.
        images: [B, H, W, C] float, standardised.
        spec: the crop recipe.

    Returns:
        globals [n_global, B, global_size, global_size, C] and locals [n_local, B, local_size, local_size, C],
        float32.
    """
    _check_images(images, "multicrop")
    images = images.astype(jnp.float32)
    b, _, _, c = images.shape
    # One threefry draw for every crop parameter: each draw unrolls into hundreds of ops on CPU and costs over a
    # second of compile time. Threefry (not RBG) keeps the crops identical whatever the batch sharding.
    u = jax.random.uniform(key, (spec.n_global + spec.n_local, b, _N_UNIFORMS))
    # The colour draws come from their own stream, so a 1-channel (SAR) run's crops do not depend on them.
    u_colour = (jax.random.uniform(jax.random.fold_in(key, 1), (spec.n_global + spec.n_local, b, 2))
                if c == 3 else None)
    globals_ = _crop_stack(u[:spec.n_global], images, spec.global_size, spec.global_scale,
                           jnp.asarray(spec.blur_p_global, jnp.float32), spec,
                           None if u_colour is None else u_colour[:spec.n_global])
    if spec.n_local == 0:
        return globals_, jnp.zeros((0, b, spec.local_size, spec.local_size, c), jnp.float32)
    locals_ = _crop_stack(u[spec.n_global:], images, spec.local_size, spec.local_scale,
                          jnp.full((spec.n_local,), spec.blur_p_local, jnp.float32), spec,
                          None if u_colour is None else u_colour[spec.n_global:])
    return globals_, locals_


def standardize(image: jax.Array, *, mean: float, std: float) -> jax.Array:
    """Source pixels (uint8, or float already in [0, 1]) to standardised float32."""
    x = jnp.asarray(image)
    scaled = x.astype(jnp.float32)
    if x.dtype == jnp.uint8:
        scaled = scaled / 255.0
    return (scaled - mean) / std


@functools.partial(jax.jit, static_argnames=("size", "crop_fraction", "interpolation"))
def center_view(images: jax.Array, size: int, *, crop_fraction: float = 1.0,
                interpolation: str = "bicubic") -> jax.Array:
    """One deterministic view for evaluation and embedding: the central square, resized to size x size.

    Args:
        images: [B, H, W, C] float, standardised.
        size: output side.
        crop_fraction: side of the central square as a fraction of min(H, W) (1.0: the whole square image;
            0.875 is DINO's resize-256/centre-crop-224 evaluation view).
        interpolation: "bicubic" or "bilinear", antialiased when shrinking.

    Returns:
        [B, size, size, C] float32.
    """
    _check_images(images, "center_view")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"center_view: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"center_view: crop_fraction must lie in (0, 1], got {crop_fraction}")
    b, height, width, _ = images.shape
    side = crop_fraction * min(height, width)
    no_flip = jnp.zeros((1, b), bool)
    wy = _resample_matrix(jnp.full((1, b), (height - side) / 2), jnp.full((1, b), side), no_flip, height, size,
                          interpolation)
    wx = _resample_matrix(jnp.full((1, b), (width - side) / 2), jnp.full((1, b), side), no_flip, width, size,
                          interpolation)
    return _resample(images.astype(jnp.float32), wy, wx)[0]
