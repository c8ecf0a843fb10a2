"""Embedded Sentinel-1 Wave Mode (WV) simulator: the default dataset of every oceansar recipe.

`SyntheticWV` is a random-access source of single-channel VV vignettes whose image `i` is a pure
function of `(seed, i)`, so N can be millions at no disk cost. It has the structure of the real
archive: heavy-tailed TenGeoP phenomenon frequencies, redundancy (bursts of near-duplicates, like
neighbouring acquisitions along one orbit) and hidden ground truth (`label`, `wind_speed`, `hs`)
that visibly drives the image, so the classification and both regression probes of OceanSAR-1
exist here too. The ground truth of any set of indices is available without rendering through
`SyntheticWV.targets` (a vectorised counter-based hash of (seed, burst, index)).

Rendering model, in sigma0 dB: a CMOD-like geophysical model function of the local wind (level
rising with log wind, up/cross-wind modulation, WV1 incidence, a noise floor), swell drawn
from a JONSWAP-like directional wavenumber spectrum with a cos^2s spread and an azimuth cutoff,
phenomenon morphology per class, and multiplicative gamma speckle. Pixels are `PIXEL_SIZE_M`
metres at every image size (OceanSAR-1's 50 m input): a 256 px image is a 12.8 km window of a
20 km vignette and a 64 px one a 3.2 km window. Swell, streak and cell scales are physical;
the few large features (rain-cell radius, front curvature, ice floes) scale with the window so
that a small image still shows one whole feature.

This module is numpy only (Grain worker processes import it); it must never import jax.
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence

import numpy as np

TENGEOP_CLASSES = (
    "pure_ocean_waves",
    "wind_streaks",
    "micro_convective_cells",
    "rain_cells",
    "biological_slicks",
    "sea_ice",
    "icebergs",
    "low_wind_area",
    "atmospheric_front",
    "oceanic_front",
)
(POW, WS, MCC, RC, BS, SI, IB, LWA, AF, OF) = range(len(TENGEOP_CLASSES))
_SHORT = ("ocean", "streaks", "MCC", "rain", "slicks", "ice", "icebergs", "low wind", "atm front",
          "oc front")

# Heavy-tailed like the WV archive: open-ocean swell dominates, icebergs are rare.
DEFAULT_CLASS_FREQUENCIES = (0.600, 0.140, 0.100, 0.040, 0.030, 0.025, 0.003, 0.035, 0.017, 0.010)

# sigma0 (dB) mapped linearly onto uint8 0..255: WV VV spans about -30 dB (calm water, near the
# noise floor) to about -3 dB (gale at 23 deg incidence); bright targets saturate at the top.
DB_RANGE = (-35.0, 5.0)
PIXEL_SIZE_M = 50.0
# One incidence (WV1): mixing in WV2's 36.8 deg would shift sigma0 ~5 dB for a reason the
# hidden targets do not record, hiding the wind signal a probe is meant to find.
INCIDENCE_DEG = 23.8
NESZ_DB = -28.0  # instrument noise floor, what calm water reaches
LOOKS = 3.5  # equivalent number of looks of the 50 m product (gamma speckle shape)

# Class-conditional ground-truth laws: wind lognormal (median m/s, log-sd), Hs lognormal
# (median m, log-sd); Hs also grows with the wind (the wind-sea part).
_WIND_LAW = np.array([
    (7.5, 0.40), (10.5, 0.25), (7.0, 0.20), (7.0, 0.30), (3.5, 0.30),
    (6.0, 0.40), (8.0, 0.35), (2.0, 0.35), (8.5, 0.35), (5.5, 0.35)], dtype=np.float64)
_HS_LAW = np.array([
    (2.2, 0.45), (2.8, 0.40), (2.2, 0.40), (2.2, 0.40), (1.4, 0.45),
    (0.4, 0.60), (3.0, 0.40), (1.5, 0.45), (2.4, 0.40), (1.8, 0.40)], dtype=np.float64)
_WIND_CLIP = (0.5, 25.0)
_HS_CLIP = (0.1, 10.0)

# Counter-based hash streams (columns of uniforms). Target streams are all `targets()` needs;
# render streams are drawn only when an image is rendered.
_TARGET_STREAMS = np.arange(5, dtype=np.uint64)  # class, wind (2 for Box-Muller), hs (2)
_NUM_MORPH = 8
# wind and swell directions, tp (2), second swell (2), morphology uniforms
_RENDER_STREAMS = np.arange(8, 8 + 6 + _NUM_MORPH, dtype=np.uint64)
_JITTER_STREAMS = np.arange(32, 36, dtype=np.uint64)  # per-image: wind, hs (2 each)
_DIR_JITTER_STREAMS = np.arange(36, 40, dtype=np.uint64)  # per-image: wind and swell directions
_IMAGE_STREAM, _BURST_STREAM = 1, 2  # SeedSequence tags of the rendering generators
_TARGETS_CHUNK = 1 << 20  # indices per vectorised block in `targets`: memory O(chunk)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_EVAL_SEED_BASE = 2**62  # evaluation splits use seeds above this; pretraining seeds stay below


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, ids: np.ndarray, streams: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1), float64 [len(ids), len(streams)]: a pure function of (seed, id,
    stream), so any subset of a dataset's draws is computed without the rest."""
    key = _mix64(np.array([seed % 2**64], dtype=np.uint64) + (streams + np.uint64(1)) * _GOLDEN)
    z = _mix64(_mix64(ids.astype(np.uint64)[:, None] * _GOLDEN + key) + key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Standard normals from two independent uniform arrays in [0, 1)."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _check_frequencies(class_frequencies: Sequence[float] | None) -> np.ndarray:
    if class_frequencies is None:
        return np.asarray(DEFAULT_CLASS_FREQUENCIES, dtype=np.float64)
    freqs = np.asarray(class_frequencies, dtype=np.float64).reshape(-1)
    if freqs.shape != (len(TENGEOP_CLASSES),):
        raise ValueError(f"class_frequencies must have {len(TENGEOP_CLASSES)} entries (one per "
                         f"TENGEOP_CLASSES), got {freqs.shape[0]}")
    if not np.all(np.isfinite(freqs)) or freqs.min() < 0 or abs(freqs.sum() - 1.0) > 1e-3:
        raise ValueError(f"class_frequencies must be non-negative and sum to 1, got "
                         f"{freqs.tolist()} (sum {freqs.sum():.4f})")
    return freqs / freqs.sum()


def scene_parameters(seed: int, indices: np.ndarray, *, burst_length: int, burst_jitter: float,
                     class_frequencies: np.ndarray, balanced: bool,
                     render: bool = True) -> dict[str, np.ndarray]:
    """Scene parameters of the given image indices, vectorised and without rendering.

    Scene parameters are drawn per burst (`index // burst_length`); with bursts longer than one,
    every image perturbs its burst's wind, Hs and directions by `burst_jitter`.

    Returns:
      dict of arrays [len(indices)]: `label` int32, `wind_speed` and `hs` float32 (the hidden
      targets), `burst` int64 and, when `render`, the rendering parameters `wind_dir`,
      `swell_dir`, `swell2_dir` (radians, image frame, x = range), `swell2_ratio`,
      `peak_wavelength` (m) and `morph` float64 [len(indices), 8] (class-specific morphology
      uniforms).
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    burst = idx // burst_length
    if burst_length > 1 and idx.size > 1 and np.all(burst[1:] >= burst[:-1]):
        # Sorted indices (targets of a whole dataset): hash each burst once, then repeat.
        starts = np.flatnonzero(np.concatenate([[True], burst[1:] != burst[:-1]]))
        u = np.repeat(_uniforms(seed, burst[starts], _TARGET_STREAMS),
                      np.diff(np.append(starts, idx.size)), axis=0)
    else:
        u = _uniforms(seed, burst, _TARGET_STREAMS)
    if balanced:
        label = (burst % len(TENGEOP_CLASSES)).astype(np.int32)
    else:
        cdf = np.cumsum(class_frequencies)
        cdf[-1] = np.inf  # rounding must never push a draw past the last class
        label = np.searchsorted(cdf, u[:, 0], side="right").astype(np.int32)
    wind_median, wind_sd = _WIND_LAW[label].T
    wind = wind_median * np.exp(wind_sd * _box_muller(u[:, 1], u[:, 2]))
    hs_median, hs_sd = _HS_LAW[label].T
    hs = hs_median * (wind / wind_median) ** 0.5 * np.exp(hs_sd * _box_muller(u[:, 3], u[:, 4]))
    jitter = burst_length > 1 and burst_jitter > 0
    if jitter:
        uj = _uniforms(seed, idx, _JITTER_STREAMS)
        wind = wind * np.exp(burst_jitter * _box_muller(uj[:, 0], uj[:, 1]))
        hs = hs * np.exp(burst_jitter * _box_muller(uj[:, 2], uj[:, 3]))
    out = {
        "label": label,
        "wind_speed": np.clip(wind, *_WIND_CLIP).astype(np.float32),
        "hs": np.clip(hs, *_HS_CLIP).astype(np.float32),
        "burst": burst,
    }
    if not render:
        return out
    r = _uniforms(seed, burst, _RENDER_STREAMS)
    wind_dir, swell_dir = 2.0 * np.pi * r[:, 0], 2.0 * np.pi * r[:, 1]
    if jitter:
        ud = _uniforms(seed, idx, _DIR_JITTER_STREAMS)
        wind_dir = wind_dir + burst_jitter * _box_muller(ud[:, 0], ud[:, 1])
        swell_dir = swell_dir + burst_jitter * _box_muller(ud[:, 2], ud[:, 3])
    # Swell period grows with Hs; the peak wavelength follows deep-water dispersion.
    tp = np.clip(11.0 + 1.2 * out["hs"] + 0.8 * _box_muller(r[:, 2], r[:, 3]), 9.0, 18.0)
    out.update({
        "wind_dir": wind_dir,
        "swell_dir": swell_dir,
        "peak_wavelength": 9.81 * tp**2 / (2.0 * np.pi),
        # Half the scenes carry a second, weaker swell system from another direction.
        "swell2_dir": 2.0 * np.pi * r[:, 4],
        "swell2_ratio": np.maximum(0.0, 1.2 * r[:, 5] - 0.6),
        "morph": r[:, 6:],
    })
    return out


def gmf_db(wind: np.ndarray, relative_dir: np.ndarray | float) -> np.ndarray:
    """CMOD-like VV sigma0 (dB) of the wind speed (m/s), without the noise floor.

    Level rises about 16 dB per decade of wind at WV1 incidence, drops fast below ~2.5 m/s
    (no Bragg waves), and is modulated by the wind direction relative to the range look.
    """
    a0, slope = -8.0, 16.0  # at INCIDENCE_DEG
    wind = np.maximum(wind, 0.3)
    harmonic = 1.0 + 0.1 * np.cos(relative_dir) + 0.25 * np.cos(2.0 * relative_dir)
    return (a0 + slope * np.log10(wind / 10.0)
            + 10.0 * np.log10(1.0 - np.exp(-(wind / 2.5) ** 2)) + 10.0 * np.log10(harmonic))


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> dict[str, np.ndarray]:
    """Per-size frequency (cycles/px, rfft layout) and pixel coordinate grids."""
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / n  # window fraction, -0.5..0.5
    # Mesoscale (>= 2 km) support: noise is drawn only there, which keeps small fields cheap.
    low = np.nonzero(f * n <= max(3.0, n * PIXEL_SIZE_M / 1500.0))
    return {"fx": fx, "fy": fy, "f": np.maximum(f, 1e-6), "theta": np.arctan2(fy, fx),
            "x": coords[None, :], "y": coords[:, None], "low": low}


_TABLE_BITS = 16


@functools.cache
def _phase_table() -> np.ndarray:
    """exp(i phi) on 2**16 equally spaced phases: random phases by table lookup of uint16 draws,
    several times cheaper than Gaussian draws, and the fields stay Gaussian by the CLT."""
    phi = np.arange(2**_TABLE_BITS) * (2.0 * np.pi / 2**_TABLE_BITS)
    return np.exp(1j * phi).astype(np.complex64)


@functools.cache
def _speckle_table_db() -> np.ndarray:
    """Quantiles (dB) of L-look intensity speckle Gamma(L, 1/L) at the 2**16 mid-probabilities:
    speckle by table lookup of uint16 draws instead of gamma sampling."""
    t = np.linspace(-14.0, 3.0, 400_001)  # t = ln(speckle)
    log_pdf = LOOKS * math.log(LOOKS) - math.lgamma(LOOKS) + LOOKS * t - LOOKS * np.exp(t)
    pdf = np.exp(log_pdf)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(t))])
    cdf /= cdf[-1]
    q = (np.arange(2**_TABLE_BITS) + 0.5) / 2**_TABLE_BITS
    return (10.0 / math.log(10.0) * np.interp(q, cdf, t)).astype(np.float32)


class _Noise:
    """Random-phase complex noise on the rfft grid, mixed between a burst and an image stream.

    Images of one burst share the burst stream; `mix` of the variance comes from the image's own
    stream, which is the small perturbation that makes bursts near-duplicates, not duplicates.
    """

    def __init__(self, rng_burst: np.random.Generator, rng_image: np.random.Generator | None,
                 mix: float):
        self.rng_burst, self.rng_image = rng_burst, rng_image
        self.a, self.b = np.float32(np.sqrt(1.0 - mix)), np.float32(np.sqrt(mix))

    def _draw(self, shape: tuple[int, ...]) -> np.ndarray:
        table = _phase_table()
        w = np.take(table, self.rng_burst.integers(0, 2**_TABLE_BITS, shape, dtype=np.uint16))
        if self.rng_image is not None:
            own = np.take(table, self.rng_image.integers(0, 2**_TABLE_BITS, shape, dtype=np.uint16))
            w = self.a * w + self.b * own
        return w

    def full(self, n: int) -> np.ndarray:
        return self._draw((n, n // 2 + 1))

    def low(self, n: int) -> np.ndarray:
        support = _grid(n)["low"]
        w = np.zeros((n, n // 2 + 1), dtype=np.complex64)
        w[support] = self._draw((support[0].size,))
        return w


def _field(w: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """Real Gaussian field with amplitude spectrum `h`, normalised to zero mean, unit std."""
    x = np.fft.irfft2(w * h, s=(n, n))
    x -= x.mean()
    return x / (x.std() + 1e-12)


def _lowpass(n: int, scale_px: float) -> np.ndarray:
    return np.exp(-(_grid(n)["f"] * scale_px) ** 2).astype(np.float32)


def _swell_spectrum(n: int, peak_wavelength: float, direction: float) -> np.ndarray:
    """JONSWAP-like slope spectrum in wavenumber with a cos^2s spread (both senses: the SAR
    image is real, so the 180-degree ambiguity is inherent)."""
    g = _grid(n)
    r = g["f"] * (peak_wavelength / PIXEL_SIZE_M)  # wavenumber over peak wavenumber
    inv_r2 = 1.0 / (r * r)
    sigma2 = np.where(r < 1.0, np.float32(2 * 0.07**2), np.float32(2 * 0.09**2))
    peak = np.exp(np.float32(math.log(3.3)) * np.exp(-(np.sqrt(r) - 1.0) ** 2 / sigma2))
    jonswap = inv_r2 / np.sqrt(r) * np.exp(-1.25 * inv_r2 * inv_r2) * peak
    c2 = np.cos(g["theta"] - np.float32(direction)) ** 2
    return jonswap * (c2 * c2) ** 2 * c2  # cos^2s spread, s = 5: short-crested swell


def _swell_filter(n: int, p: dict[str, np.ndarray], k: int) -> np.ndarray:
    """Amplitude filter of the SAR swell image: primary plus optional secondary swell system,
    with the azimuth (rows) cutoff that smears short waves as the sea state grows."""
    wavelength = float(p["peak_wavelength"][k])
    spectrum = _swell_spectrum(n, wavelength, float(p["swell_dir"][k]))
    ratio = float(p["swell2_ratio"][k])
    if ratio > 0:
        secondary = _swell_spectrum(n, 0.75 * wavelength, float(p["swell2_dir"][k]))
        spectrum = spectrum + ratio * secondary
    cutoff_m = 140.0 + 18.0 * float(p["hs"][k]) + 4.0 * float(p["wind_speed"][k])
    azimuth = np.exp(-(_grid(n)["fy"] * cutoff_m / PIXEL_SIZE_M * 2.0) ** 2)
    return np.sqrt(spectrum).astype(np.float32) * azimuth


def _band_filter(n: int, spacing_px: float, direction: float | None, width: float,
                 along: float) -> np.ndarray:
    """Band-pass at 1/spacing: isotropic ring (direction None) or a band across `direction`
    narrow along it (elongated rolls)."""
    g = _grid(n)
    f0 = 1.0 / spacing_px
    if direction is None:
        return np.exp(-((g["f"] - f0) / (width * f0)) ** 2).astype(np.float32)
    c, s = np.cos(direction), np.sin(direction)
    f_along = g["fx"] * c + g["fy"] * s
    f_across = -g["fx"] * s + g["fy"] * c
    return (np.exp(-((np.abs(f_across) - f0) / (width * f0)) ** 2)
            * np.exp(-(f_along / (along * f0)) ** 2)).astype(np.float32)


def _curve_distance(n: int, offset: float, angle: float, curvature: float,
                    wiggle: np.ndarray) -> np.ndarray:
    """Signed distance (px) to a curved line across the window (offset, normal angle, bend)."""
    g = _grid(n)
    c, s = np.cos(angle), np.sin(angle)
    along = -g["x"] * s + g["y"] * c
    return n * (g["x"] * c + g["y"] * s - offset - curvature * along**2 - 0.04 * wiggle)


def render(params: dict[str, np.ndarray], k: int, n: int, seed: int, index: int,
           burst_mix: float) -> np.ndarray:
    """Renders one vignette in sigma0 dB, speckle included.

    Args:
      params: `scene_parameters(..., render=True)` output.
      k: row of `params` to render.
      n: image side in pixels.
      seed: dataset seed (keys the burst and image random streams with `burst` and `index`).
      index: the image's index.
      burst_mix: variance fraction of the random fields drawn from the image's own stream
        (0: fields come from the burst stream only).

    Returns:
      float32 [n, n] sigma0 in dB.
    """
    label = int(params["label"][k])
    wind = float(params["wind_speed"][k])
    hs = float(params["hs"][k])
    wind_dir = float(params["wind_dir"][k])
    m = params["morph"][k]
    burst = int(params["burst"][k])
    rng_burst = np.random.default_rng([seed, burst, _BURST_STREAM])
    rng_image = np.random.default_rng([seed, index, _IMAGE_STREAM])
    noise = _Noise(rng_burst, rng_image if burst_mix > 0 else None, burst_mix)
    g = _grid(n)
    window_m = n * PIXEL_SIZE_M

    if label == SI:
        # Sea ice: no swell; dark textured floes, bright ridges along floe edges and cracks.
        texture = _field(noise.full(n), (g["f"] ** -1.2).astype(np.float32), n)
        floes = _field(noise.full(n), _band_filter(n, 0.25 * n * (0.6 + m[0]), None, 0.8, 0), n)
        cracks = _field(noise.full(n), _band_filter(n, 0.08 * n * (0.6 + m[1]), None, 0.8, 0), n)
        rubble = _field(noise.low(n), _lowpass(n, 0.06 * n), n)
        base = -24.0 + 5.0 * m[2]
        # Bright ridges along floe edges (zero crossings of two band-passed fields), bright
        # rubble zones, dark smooth floes between.
        ridges = ((8.0 + 5.0 * m[3]) * np.exp(-(floes / 0.15) ** 2)
                  + 5.0 * np.exp(-(cracks / 0.1) ** 2))
        zones = (2.0 + 4.0 * m[4]) / (1.0 + np.exp(-(rubble - 1.0 + m[5]) * 5.0))
        db = base + 1.5 * texture + ridges + zones
    else:
        swell = _field(noise.full(n), _swell_filter(n, params, k), n)
        meso = _field(noise.low(n), _lowpass(n, 0.35 * max(n, 4000.0 / PIXEL_SIZE_M)), n)
        log_wind = np.log(wind) + 0.04 * meso
        extra_db = 0.0
        swell_amp = min(0.4 + 0.6 * hs, 4.5)
        streak_dir = wind_dir + np.deg2rad(20.0) * (m[0] - 0.5)
        streak_px = (400.0 + 700.0 * m[1]) / PIXEL_SIZE_M
        if label == WS:
            streaks = _field(noise.full(n), _band_filter(n, streak_px, streak_dir, 0.8, 0.06), n)
            extra_db = (0.08 * wind + 0.3) * streaks
            swell_amp *= 0.6
        elif label == MCC:
            # Cells are 1-3 km (|field| halves the band's period), at most half the window.
            cell_px = min((2000.0 + 4000.0 * m[1]) / PIXEL_SIZE_M, n / 1.5)
            cells = _field(noise.full(n), _band_filter(n, cell_px, None, 0.9, 0), n)
            # |field| makes polygonal cells with dark narrow boundaries (downdraft lines).
            pattern = np.abs(cells) ** 0.7
            log_wind = log_wind + (0.12 + 0.1 * m[2]) * (pattern - pattern.mean()) / pattern.std()
            swell_amp *= 0.7
        elif label == BS:
            slick = _field(noise.low(n), _band_filter(n, 0.3 * n, streak_dir, 1.2, 0.5), n)
            width = 0.10 + 0.12 * m[2]
            fade = 1.0 / (1.0 + np.exp(-3.0 * (meso + 0.5)))  # filaments fade in and out
            extra_db = -(4.0 + 5.0 * m[3]) * fade * np.exp(-(slick / width) ** 2)
            swell_amp *= 0.8
        elif label == LWA:
            patch = _field(noise.low(n), _lowpass(n, 0.1 * n), n)
            calm = 1.0 / (1.0 + np.exp(-(patch - 0.8 * (m[2] - 0.5)) * 4.0))
            log_wind = log_wind - (0.9 + 0.8 * m[3]) * calm
            swell_amp *= 0.4
        elif label == RC:
            count = 1 + int(m[2] * 2.5)
            for j in range(count):
                u = (m[(3 + 2 * j) % _NUM_MORPH], m[(4 + 2 * j) % _NUM_MORPH])
                cx, cy = 0.7 * (u[0] - 0.5), 0.7 * (u[1] - 0.5)
                radius = min(0.08 + 0.17 * u[1], 5000.0 / window_m)
                d = np.sqrt((g["x"] - cx) ** 2 + (g["y"] - cy) ** 2) / radius * (1.0 + 0.2 * meso)
                rim = max(0.25, 2.0 / (radius * n))  # gust-front width, at least two pixels
                # Downdraft gust front: bright rim; rain at the core damps (dark) or splashes.
                core = (1.5 if u[0] > 0.6 else -3.0) * np.exp(-(d / 0.6) ** 4)
                log_wind = log_wind + 0.45 * np.exp(-((d - 1.0) / rim) ** 2)
                extra_db = extra_db + core
        elif label == AF:
            wiggle = _field(noise.low(n), _lowpass(n, 0.2 * n), n)
            d = _curve_distance(n, 0.5 * (m[2] - 0.5), 2 * np.pi * m[3], 1.6 * (m[4] - 0.5), wiggle)
            jump = 0.25 + 0.3 * m[5]
            log_wind = log_wind + jump * np.tanh(d / (1.0 + 1.5 * m[6]))
            extra_db = 2.0 * m[7] * np.exp(-(d / 1.5) ** 2)
        elif label == OF:
            wiggle = _field(noise.low(n), _lowpass(n, 0.15 * n), n)
            d = _curve_distance(n, 0.4 * (m[2] - 0.5), 2 * np.pi * m[3], 3.0 * (m[4] - 0.5), wiggle)
            sign = 1.0 if m[5] > 0.4 else -1.0
            side = np.tanh(d / 1.0)
            extra_db = sign * (3.0 + 2.0 * m[6]) * np.exp(-(d / 1.3) ** 2) + 0.6 * side
            swell = swell * (1.0 + (0.3 * m[7] + 0.5) * side)
        else:  # POW, IB: open ocean with faint rolls
            streaks = _field(noise.full(n), _band_filter(n, streak_px, streak_dir, 0.5, 0.12), n)
            extra_db = 0.015 * wind * streaks
        relative_dir = np.float32(wind_dir)  # range look along +x
        db = gmf_db(np.exp(log_wind), relative_dir) + swell_amp * swell + extra_db
        if label == IB:
            db = _add_icebergs(db, n, m, g)
    intensity = np.exp(db * np.float32(0.1 * math.log(10.0))) + np.float32(10.0 ** (0.1 * NESZ_DB))
    speckle_db = np.take(_speckle_table_db(),
                         rng_image.integers(0, 2**_TABLE_BITS, (n, n), dtype=np.uint16))
    return (np.float32(10.0) * np.log10(intensity) + speckle_db).astype(np.float32)


def _add_icebergs(db: np.ndarray, n: int, m: np.ndarray, g: dict) -> np.ndarray:
    """Small bright point targets, each with a dark radar shadow on its far-range side."""
    count = 2 + int(m[2] * 5.0)
    boost = np.zeros_like(db)
    for j in range(count):
        cx = 0.8 * (m[(3 + j) % _NUM_MORPH] - 0.5)
        cy = 0.8 * (((m[(4 + j) % _NUM_MORPH] * 7.31) % 1.0) - 0.5)
        size = (1.0 + 1.5 * m[(5 + j) % _NUM_MORPH]) / n
        r2 = ((g["x"] - cx) ** 2 + (g["y"] - cy) ** 2) / size**2
        shadow = ((g["x"] - cx - 2.5 * size) ** 2 / 4.0 + (g["y"] - cy) ** 2) / size**2
        boost = boost + (22.0 + 6.0 * m[6]) * np.exp(-r2) - 8.0 * np.exp(-shadow)
    return db + boost


def to_uint8(db: np.ndarray) -> np.ndarray:
    """Quantise sigma0 dB linearly over `DB_RANGE` to uint8."""
    lo, hi = DB_RANGE
    return np.clip(np.rint((db - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of `to_uint8`: sigma0 dB (float32) of quantised pixels."""
    lo, hi = DB_RANGE
    return (image.astype(np.float32) * ((hi - lo) / 255.0) + lo).astype(np.float32)


class SyntheticWV:
    """Random-access source of simulated S1 WV vignettes with hidden TenGeoP / wind / Hs truth.

    Records: `image` uint8 [image_size, image_size, 1] (sigma0 dB over `DB_RANGE`), `sample_id`
    int64, `label` int32 (index into `TENGEOP_CLASSES`), `wind_speed` float32 (m/s), `hs`
    float32 (m). Cheap to construct and picklable (it holds only its arguments).

    Args:
      num_samples: number of images N.
      image_size: side in pixels (each `PIXEL_SIZE_M` metres).
      seed: dataset seed; image i is a pure function of (seed, i). Seeds at or above 2**62 are
        reserved for `evaluation_splits`.
      class_frequencies: probability of each class in `TENGEOP_CLASSES` order (None: the
        heavy-tailed `DEFAULT_CLASS_FREQUENCIES`).
      burst_length: consecutive indices sharing one scene (class, wind, Hs, directions,
        morphology), like neighbouring acquisitions along an orbit; 1 = no redundancy.
      burst_jitter: size of the per-image perturbation within a burst (relative wind/Hs change,
        direction change in radians, and the variance fraction of fresh random field).
      balanced: class-balanced labels (burst b gets class b % 10) instead of frequencies.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0,
                 class_frequencies: Sequence[float] | None = None, burst_length: int = 8,
                 burst_jitter: float = 0.05, balanced: bool = False):
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if int(burst_length) < 1:
            raise ValueError(f"burst_length must be >= 1, got {burst_length}")
        if not 0.0 <= float(burst_jitter) <= 1.0:
            raise ValueError(f"burst_jitter must be in [0, 1], got {burst_jitter}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.class_frequencies = _check_frequencies(class_frequencies)
        self.burst_length = int(burst_length)
        self.burst_jitter = float(burst_jitter)
        self.balanced = bool(balanced)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The TenGeoP phenomenon names, indexed by `label`."""
        return TENGEOP_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"SyntheticWV(num_samples={self.num_samples}, image_size={self.image_size}, "
                f"seed={self.seed}, burst_length={self.burst_length}, "
                f"burst_jitter={self.burst_jitter}, balanced={self.balanced})")

    def _params(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return scene_parameters(self.seed, indices, burst_length=self.burst_length,
                                burst_jitter=self.burst_jitter,
                                class_frequencies=self.class_frequencies, balanced=self.balanced)

    def _indices(self, indices: np.ndarray | Sequence[int] | None) -> np.ndarray:
        if indices is None:
            return np.arange(self.num_samples, dtype=np.int64)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(f"SyntheticWV indices must lie in [0, {self.num_samples}), got "
                             f"min {idx.min()} max {idx.max()}")
        return idx

    def targets(self, indices: np.ndarray | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Hidden ground truth of `indices` (all when None) without rendering any image.

        Returns:
          dict of `label` int32, `wind_speed` float32 and `hs` float32 arrays [len(indices)].
        """
        idx = self._indices(indices)
        chunks = [scene_parameters(self.seed, idx[start:start + _TARGETS_CHUNK],
                                   burst_length=self.burst_length, burst_jitter=self.burst_jitter,
                                   class_frequencies=self.class_frequencies,
                                   balanced=self.balanced, render=False)
                  for start in range(0, max(idx.size, 1), _TARGETS_CHUNK)]
        return {key: np.concatenate([c[key] for c in chunks])
                for key in ("label", "wind_speed", "hs")}

    def labels(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """TenGeoP class index (int32) of `indices` (all when None), without rendering."""
        return self.targets(indices)["label"]

    def _render(self, index: int) -> tuple[int, dict[str, np.ndarray], np.ndarray]:
        i = operator.index(index)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SyntheticWV index {i} out of range [0, {self.num_samples})")
        p = self._params(np.array([i]))
        mix = self.burst_jitter if self.burst_length > 1 else 0.0
        return i, p, render(p, 0, self.image_size, self.seed, i, mix)

    def render_db(self, index: int) -> np.ndarray:
        """sigma0 (dB) float32 [image_size, image_size] of image `index`, before quantisation."""
        return self._render(index)[2]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i, p, db = self._render(index)
        return {
            "image": to_uint8(db)[:, :, None],
            "sample_id": np.int64(i),
            "label": np.int32(p["label"][0]),
            "wind_speed": np.float32(p["wind_speed"][0]),
            "hs": np.float32(p["hs"][0]),
        }


def evaluation_splits(num_train_per_class: int, num_test_per_class: int, image_size: int,
                      seed: int, **kwargs) -> tuple[SyntheticWV, SyntheticWV]:
    """Labelled, class-balanced probe train/test sources from disjoint seeds, without bursts.

    Both seeds live above 2**62, away from any pretraining seed, and differ from each other, so
    no probe image is a pretraining image or appears in both splits.

    Args:
      num_train_per_class: train images per TenGeoP class.
      num_test_per_class: test images per class.
      image_size: side in pixels.
      seed: evaluation seed (the two split seeds derive from it).
      **kwargs: other `SyntheticWV` arguments except `burst_length` and `balanced`.

    Returns:
      (train, test) `SyntheticWV` sources whose label of index i is i % 10.
    """
    for key in ("burst_length", "balanced", "num_samples", "seed"):
        if key in kwargs:
            raise ValueError(f"evaluation_splits sets {key} itself; do not pass it")
    classes = len(TENGEOP_CLASSES)
    common = dict(image_size=image_size, burst_length=1, balanced=True, **kwargs)
    base = _EVAL_SEED_BASE + 2 * int(seed)
    train = SyntheticWV(num_samples=classes * int(num_train_per_class), seed=base, **common)
    test = SyntheticWV(num_samples=classes * int(num_test_per_class), seed=base + 1, **common)
    return train, test


QUICKLOOK_FOOTPRINT_M = 20_000.0  # side of a real WV vignette (and of its quicklook PNG)
# WV-Net phenomenon codes of `sample_data.csv` that have a TenGeoP counterpart here; scenes with
# none of them (swell only, unidentified, internal waves...) pair with pure ocean waves.
_CODE_TO_CLASS = {"WS": WS, "MC": MCC, "RC": RC, "BS": BS, "SI": SI, "IB": IB, "LW": LWA,
                  "AB": AF, "OF": OF}


def _stretch(image: np.ndarray) -> np.ndarray:
    """Percentile (1, 99) contrast stretch to [0, 1], as WV quicklooks are displayed."""
    lo, hi = np.percentile(image, (1.0, 99.0))
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def load_quicklooks(real_dir: str, image_size: int) -> list[tuple[str, np.ndarray]]:
    """Real WV quicklooks at the simulator's pixel size: the central `image_size *
    PIXEL_SIZE_M` metres of each 20 km PNG, resized to `image_size`.

    Returns:
      (caption, float32 [image_size, image_size]) pairs; the caption lists the phenomenon codes
      of `sample_data.csv` when it is present.
    """
    import csv
    import pathlib

    from PIL import Image

    root = pathlib.Path(real_dir)
    codes: dict[str, str] = {}
    table = root / "sample_data.csv"
    if table.is_file():
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                codes[row["filename"]] = "+".join(k for k, v in row.items() if v == "1")
    fraction = min(1.0, image_size * PIXEL_SIZE_M / QUICKLOOK_FOOTPRINT_M)
    out = []
    for path in sorted(root.glob("*.png")):
        try:
            a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        except OSError as e:
            raise ValueError(f"cannot read quicklook {path}: {e}") from e
        h, w = a.shape
        # Quicklook rows and columns each span the 20 km footprint; zero-valued margins aside.
        ch, cw = max(int(fraction * h), 1), max(int(fraction * w), 1)
        crop = a[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
        resized = Image.fromarray(crop).resize((image_size, image_size), Image.BILINEAR)
        out.append((codes.get(path.name, path.stem[-6:]), np.asarray(resized, dtype=np.float32)))
    return out


def _caption(ax, text: str) -> None:
    """Caption inside the bottom of a vignette, so it cannot be read as the next row's title."""
    ax.text(0.5, 0.02, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=5.5,
            bbox=dict(boxstyle="square,pad=0.15", facecolor="white", alpha=0.8, linewidth=0))


def make_figure(out: str, image_size: int = 256, real_dir: str | None = None,
                samples_per_class: int = 5, seed: int = 0) -> str:
    """Writes the real-versus-simulated figure and the per-class grid to `out` (PNG).

    Top block (when `real_dir` holds quicklooks): real quicklooks over simulated vignettes drawn
    from the default class frequencies, both percentile-stretched like quicklooks. Below: one
    row per TenGeoP class, simulated sigma0 on a fixed -30..0 dB window (brightness follows
    wind), titled with wind speed and Hs.

    Returns:
      a one-line description of what was drawn.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    real = load_quicklooks(real_dir, image_size) if real_dir else []
    cols = max(samples_per_class, 8)
    real = real[:cols]
    top_rows = 2 if real else 0
    rows = top_rows + len(TENGEOP_CLASSES)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.27 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if real:
        # Each real quicklook sits over a simulated vignette of its (first mapped) phenomenon.
        sim = SyntheticWV(num_samples=10**6, image_size=image_size, seed=seed + 1, burst_length=1,
                          balanced=True)
        for j, (caption, image) in enumerate(real):
            axes[0, j].imshow(_stretch(image), cmap="gray", vmin=0, vmax=1)
            _caption(axes[0, j], f"real {caption}")
            mapped = [_CODE_TO_CLASS[c] for c in caption.split("+") if c in _CODE_TO_CLASS]
            sample = sim[(mapped[-1] if mapped else POW) + len(TENGEOP_CLASSES) * j]
            axes[1, j].imshow(_stretch(from_uint8(sample["image"][:, :, 0])), cmap="gray",
                              vmin=0, vmax=1)
            _caption(axes[1, j], f"sim {_SHORT[int(sample['label'])]}")
    source = SyntheticWV(num_samples=10**6, image_size=image_size, seed=seed, burst_length=1,
                         balanced=True)
    for c in range(len(TENGEOP_CLASSES)):
        for j in range(samples_per_class):
            index = c + len(TENGEOP_CLASSES) * j
            sample = source[index]
            ax = axes[top_rows + c, j]
            ax.imshow(from_uint8(sample["image"][:, :, 0]), cmap="gray", vmin=-30.0, vmax=0.0)
            _caption(ax, f"{_SHORT[c]} U={sample['wind_speed']:.1f} Hs={sample['hs']:.1f}")
    note = ("top: real S1 WV quicklooks (central crop at the simulator's "
            f"{PIXEL_SIZE_M:.0f} m pixels) over simulated, both percentile-stretched; "
            "below: simulated per class, sigma0 -30..0 dB"
            if real else "simulated per class, sigma0 -30..0 dB (real quicklooks not found)")
    fig.suptitle(f"SyntheticWV {image_size} px: {note}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.985), h_pad=0.15, w_pad=0.15)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    # Grayscale PNG: the figure has no colour and this keeps it well under 1 MB.
    Image.open(buffer).convert("L").save(out, optimize=True)
    return note


def main(argv: Sequence[str]) -> None:
    """CLI entry: `python -m oceansar.data.synthetic_wv --out docs/synthetic_wv.png`."""
    import os

    from absl import flags

    del argv
    real_dir = flags.FLAGS.real_dir
    if real_dir and not os.path.isdir(real_dir):
        print(f"real quicklook folder {real_dir} not found: drawing the simulated grid only")
        real_dir = None
    note = make_figure(flags.FLAGS.out, image_size=flags.FLAGS.image_size, real_dir=real_dir,
                       seed=flags.FLAGS.seed)
    print(f"wrote {flags.FLAGS.out}: {note}")


if __name__ == "__main__":
    from absl import app, flags

    # Flags are defined only when run as a script: importing the source must not register them.
    flags.DEFINE_string("out", "docs/synthetic_wv.png", "output PNG path")
    flags.DEFINE_integer("image_size", 256, "vignette side in pixels")
    flags.DEFINE_string("real_dir", "../shared/data/s1wv_samples",
                        "folder of real WV quicklook PNGs (+ sample_data.csv); skipped if absent")
    flags.DEFINE_integer("seed", 0, "simulator seed of the drawn vignettes")
    app.run(main)
