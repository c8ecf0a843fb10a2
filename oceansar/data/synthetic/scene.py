"""Scene parameters of the WV simulator: the TenGeoP class table and default class frequencies,
the instrument constants (pixel size, incidence, noise floor, looks, the uint8 dB range), the
class-conditional wind and Hs laws, and the counter-based splitmix64 hash that draws every image's
hidden truth (`label`, `wind_speed`, `hs`) and rendering parameters as a pure function of
(seed, burst, index), vectorised and without rendering (`scene_parameters`); plus `gmf_db`, the
CMOD-like geophysical model function that maps wind onto sigma0. Numpy only.
"""
from __future__ import annotations

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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
