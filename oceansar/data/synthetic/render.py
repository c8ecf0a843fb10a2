"""Renderer of the WV simulator: one vignette in sigma0 dB from its scene parameters. A CMOD-like
geophysical model function of the local wind (level rising with log wind, up/cross-wind
modulation, WV1 incidence, a noise floor), swell drawn from a JONSWAP-like directional
wavenumber spectrum with a cos^2s spread and an azimuth cutoff, phenomenon morphology per class,
and multiplicative gamma speckle. Pixels are `PIXEL_SIZE_M` metres at every image size
(OceanSAR-1's 50 m input): a 256 px image is a 12.8 km window of a 20 km vignette and a 64 px one
a 3.2 km window. Swell, streak and cell scales are physical; the few large features (rain-cell
radius, front curvature, ice floes) scale with the window so that a small image still shows one
whole feature. Random fields come from a burst stream mixed with the image's own stream, so the
images of a burst are near-duplicates. Also the uint8 quantisation (`to_uint8`, `from_uint8`).
Numpy only.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from oceansar.data.synthetic.scene import (
    AF, BS, DB_RANGE, IB, LOOKS, LWA, MCC, NESZ_DB, OF, PIXEL_SIZE_M, RC, SI, WS, _NUM_MORPH,
    gmf_db)

_IMAGE_STREAM, _BURST_STREAM = 1, 2  # SeedSequence tags of the rendering generators


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
    m = params["morph"][k]
    burst = int(params["burst"][k])
    rng_burst = np.random.default_rng([seed, burst, _BURST_STREAM])
    rng_image = np.random.default_rng([seed, index, _IMAGE_STREAM])
    noise = _Noise(rng_burst, rng_image if burst_mix > 0 else None, burst_mix)
    if label == SI:
        db = _sea_ice_db(noise, n, m)
    else:
        db = _open_water_db(params, k, noise, n)
    intensity = np.exp(db * np.float32(0.1 * math.log(10.0))) + np.float32(10.0 ** (0.1 * NESZ_DB))
    speckle_db = np.take(_speckle_table_db(),
                         rng_image.integers(0, 2**_TABLE_BITS, (n, n), dtype=np.uint16))
    return (np.float32(10.0) * np.log10(intensity) + speckle_db).astype(np.float32)


def _sea_ice_db(noise: _Noise, n: int, m: np.ndarray) -> np.ndarray:
    """Sea ice, before speckle: no swell; dark textured floes, bright ridges along floe edges and
    cracks."""
    g = _grid(n)
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
    return base + 1.5 * texture + ridges + zones


@dataclasses.dataclass
class _Sea:
    """An open-water scene being rendered: what a phenomenon draws on (noise, size, morphology
    uniforms, grids, wind, the mesoscale field, the streak geometry) and the terms it edits
    (`log_wind`, `extra_db`, `swell_amp`, `swell`)."""

    noise: _Noise
    n: int
    m: np.ndarray
    g: dict
    wind: float
    meso: np.ndarray
    streak_dir: float
    streak_px: float
    swell: np.ndarray
    log_wind: np.ndarray
    swell_amp: float
    extra_db: np.ndarray | float = 0.0


def _open_water_db(params: dict[str, np.ndarray], k: int, noise: _Noise, n: int) -> np.ndarray:
    """Every class but sea ice, before speckle: GMF of the local (log) wind plus swell plus the
    class's phenomenon, which edits the wind, the swell and an additive dB term."""
    label = int(params["label"][k])
    wind = float(params["wind_speed"][k])
    hs = float(params["hs"][k])
    wind_dir = float(params["wind_dir"][k])
    m = params["morph"][k]
    g = _grid(n)
    swell = _field(noise.full(n), _swell_filter(n, params, k), n)
    meso = _field(noise.low(n), _lowpass(n, 0.35 * max(n, 4000.0 / PIXEL_SIZE_M)), n)
    sea = _Sea(noise=noise, n=n, m=m, g=g, wind=wind, meso=meso,
               streak_dir=wind_dir + np.deg2rad(20.0) * (m[0] - 0.5),
               streak_px=(400.0 + 700.0 * m[1]) / PIXEL_SIZE_M,
               swell=swell, log_wind=np.log(wind) + 0.04 * meso,
               swell_amp=min(0.4 + 0.6 * hs, 4.5))
    _PHENOMENA.get(label, _faint_rolls)(sea)
    relative_dir = np.float32(wind_dir)  # range look along +x
    db = gmf_db(np.exp(sea.log_wind), relative_dir) + sea.swell_amp * sea.swell + sea.extra_db
    if label == IB:
        db = _add_icebergs(db, n, m, g)
    return db


def _wind_streaks(sea: _Sea) -> None:
    """Wind streaks: rolls along the wind, their contrast growing with it."""
    n = sea.n
    band = _band_filter(n, sea.streak_px, sea.streak_dir, 0.8, 0.06)
    streaks = _field(sea.noise.full(n), band, n)
    sea.extra_db = (0.08 * sea.wind + 0.3) * streaks
    sea.swell_amp *= 0.6


def _convective_cells(sea: _Sea) -> None:
    """Micro-convective cells: polygonal wind cells."""
    n, m = sea.n, sea.m
    # Cells are 1-3 km (|field| halves the band's period), at most half the window.
    cell_px = min((2000.0 + 4000.0 * m[1]) / PIXEL_SIZE_M, n / 1.5)
    cells = _field(sea.noise.full(n), _band_filter(n, cell_px, None, 0.9, 0), n)
    # |field| makes polygonal cells with dark narrow boundaries (downdraft lines).
    pattern = np.abs(cells) ** 0.7
    sea.log_wind = sea.log_wind + (0.12 + 0.1 * m[2]) * (pattern - pattern.mean()) / pattern.std()
    sea.swell_amp *= 0.7


def _biological_slicks(sea: _Sea) -> None:
    """Biological slicks: dark filaments along the wind that fade in and out."""
    n, m = sea.n, sea.m
    slick = _field(sea.noise.low(n), _band_filter(n, 0.3 * n, sea.streak_dir, 1.2, 0.5), n)
    width = 0.10 + 0.12 * m[2]
    fade = 1.0 / (1.0 + np.exp(-3.0 * (sea.meso + 0.5)))  # filaments fade in and out
    sea.extra_db = -(4.0 + 5.0 * m[3]) * fade * np.exp(-(slick / width) ** 2)
    sea.swell_amp *= 0.8


def _low_wind_area(sea: _Sea) -> None:
    """Low wind area: a calm patch where the wind drops."""
    n, m = sea.n, sea.m
    patch = _field(sea.noise.low(n), _lowpass(n, 0.1 * n), n)
    calm = 1.0 / (1.0 + np.exp(-(patch - 0.8 * (m[2] - 0.5)) * 4.0))
    sea.log_wind = sea.log_wind - (0.9 + 0.8 * m[3]) * calm
    sea.swell_amp *= 0.4


def _rain_cells(sea: _Sea) -> None:
    """Rain cells: one to three cells, each a bright gust-front rim around a dark or bright core."""
    n, m, g = sea.n, sea.m, sea.g
    window_m = n * PIXEL_SIZE_M
    count = 1 + int(m[2] * 2.5)
    for j in range(count):
        u = (m[(3 + 2 * j) % _NUM_MORPH], m[(4 + 2 * j) % _NUM_MORPH])
        cx, cy = 0.7 * (u[0] - 0.5), 0.7 * (u[1] - 0.5)
        radius = min(0.08 + 0.17 * u[1], 5000.0 / window_m)
        d = np.sqrt((g["x"] - cx) ** 2 + (g["y"] - cy) ** 2) / radius * (1.0 + 0.2 * sea.meso)
        rim = max(0.25, 2.0 / (radius * n))  # gust-front width, at least two pixels
        # Downdraft gust front: bright rim; rain at the core damps (dark) or splashes.
        core = (1.5 if u[0] > 0.6 else -3.0) * np.exp(-(d / 0.6) ** 4)
        sea.log_wind = sea.log_wind + 0.45 * np.exp(-((d - 1.0) / rim) ** 2)
        sea.extra_db = sea.extra_db + core


def _atmospheric_front(sea: _Sea) -> None:
    """Atmospheric front: a wind jump across a curved line, with a bright line along it."""
    n, m = sea.n, sea.m
    wiggle = _field(sea.noise.low(n), _lowpass(n, 0.2 * n), n)
    d = _curve_distance(n, 0.5 * (m[2] - 0.5), 2 * np.pi * m[3], 1.6 * (m[4] - 0.5), wiggle)
    jump = 0.25 + 0.3 * m[5]
    sea.log_wind = sea.log_wind + jump * np.tanh(d / (1.0 + 1.5 * m[6]))
    sea.extra_db = 2.0 * m[7] * np.exp(-(d / 1.5) ** 2)


def _oceanic_front(sea: _Sea) -> None:
    """Oceanic front: a bright or dark curved line with a step in level and swell across it."""
    n, m = sea.n, sea.m
    wiggle = _field(sea.noise.low(n), _lowpass(n, 0.15 * n), n)
    d = _curve_distance(n, 0.4 * (m[2] - 0.5), 2 * np.pi * m[3], 3.0 * (m[4] - 0.5), wiggle)
    sign = 1.0 if m[5] > 0.4 else -1.0
    side = np.tanh(d / 1.0)
    sea.extra_db = sign * (3.0 + 2.0 * m[6]) * np.exp(-(d / 1.3) ** 2) + 0.6 * side
    sea.swell = sea.swell * (1.0 + (0.3 * m[7] + 0.5) * side)


def _faint_rolls(sea: _Sea) -> None:
    """Pure ocean waves and icebergs: open ocean with faint rolls."""
    n = sea.n
    band = _band_filter(n, sea.streak_px, sea.streak_dir, 0.5, 0.12)
    streaks = _field(sea.noise.full(n), band, n)
    sea.extra_db = 0.015 * sea.wind * streaks


# The phenomenon of each open-water class; the others (pure ocean waves, icebergs) get faint rolls.
_PHENOMENA = {WS: _wind_streaks, MCC: _convective_cells, BS: _biological_slicks,
              LWA: _low_wind_area, RC: _rain_cells, AF: _atmospheric_front, OF: _oceanic_front}


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
