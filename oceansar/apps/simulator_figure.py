"""Figure command of the WV simulator: real Sentinel-1 WV quicklooks over simulated vignettes and
one row of simulated vignettes per TenGeoP class, written to a PNG
(`python -m oceansar.apps.simulator_figure --out docs/synthetic_wv.png`). It lives outside the
library because it needs matplotlib, Pillow and absl, which the numpy-only simulator does not.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oceansar.data.synthetic import (
    AF, BS, IB, LWA, MCC, OF, PIXEL_SIZE_M, POW, RC, SI, TENGEOP_CLASSES, WS, SyntheticWV,
    from_uint8)

# Short class names of the captions, in `TENGEOP_CLASSES` order.
_SHORT = ("ocean", "streaks", "MCC", "rain", "slicks", "ice", "icebergs", "low wind", "atm front",
          "oc front")

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
    """CLI entry: `python -m oceansar.apps.simulator_figure --out docs/synthetic_wv.png`."""
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

    # Flags are defined only when run as a script: importing this module must not register them.
    flags.DEFINE_string("out", "docs/synthetic_wv.png", "output PNG path")
    flags.DEFINE_integer("image_size", 256, "vignette side in pixels")
    flags.DEFINE_string("real_dir", "../shared/data/s1wv_samples",
                        "folder of real WV quicklook PNGs (+ sample_data.csv); skipped if absent")
    flags.DEFINE_integer("seed", 0, "simulator seed of the drawn vignettes")
    app.run(main)
