"""`launch.py --mode=curate` with `recipe=captions`: how redundant a captioned pool's captions are, before training.

For the image-text pool a config names (the captions source, or the simulator with generated captions), it reads
every record's caption fields, as training will (exact duplicates folded, WFA BLEU uniqueness weights, arXiv
2505.11121), and writes `summary.json` and `captions.png`: distinct captions per image, the share of captions that
repeat another of their image, the weights' spread (each image's largest weight and the entropy of its weights),
and the text-encoder tokens folding saves (what the text tower runs on against every original caption). Nothing
is selected: this is the report a user reads before choosing `text.aggregation`.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from oceansar.data import sources
from oceansar.spec import DataSpec, TextSpec, build


def _columns(source) -> dict[str, np.ndarray]:
    """Every record's caption fields [n, ...], without decoding images where the source can."""
    if hasattr(source, "caption_columns"):
        return dict(source.caption_columns())
    records = [source.caption_record(i) for i in range(len(source))]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def caption_statistics(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Redundancy statistics of a captioned pool's caption fields (see the module docstring)."""
    valid, count, w = columns["caption_valid"], columns["caption_count"], columns["caption_weights"]
    distinct = valid.sum(1)
    originals = count.sum(1)
    tokens_all = int(columns["caption_tokens"].sum())
    tokens_distinct = int((columns["caption_ids"] != 0)[valid].sum())
    entropy = -np.sum(np.where(w > 0, w * np.log(np.maximum(w, 1e-12)), 0.0), axis=1)
    return {
        "images": int(valid.shape[0]),
        "captions": int(originals.sum()),
        "distinct_captions": int(distinct.sum()),
        "distinct_per_image": {str(k): int(v) for k, v in zip(*np.unique(distinct, return_counts=True))},
        "images_with_a_repeat": int(np.sum(distinct < originals)),
        "repeat_share": float(1.0 - distinct.sum() / max(originals.sum(), 1)),
        "max_weight": {"mean": float(w.max(1).mean()), "median": float(np.median(w.max(1)))},
        "weight_entropy": {"mean": float(entropy.mean()), "uniform_over_originals": float(np.log(originals).mean())},
        "tokens_all_captions": tokens_all,
        "tokens_distinct_captions": tokens_distinct,
        "token_saving": float(1.0 - tokens_distinct / max(tokens_all, 1)),
    }


def _plot(columns: dict[str, np.ndarray], out: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid, w = columns["caption_valid"], columns["caption_weights"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    distinct = valid.sum(1)
    axes[0].hist(distinct, bins=np.arange(0.5, valid.shape[1] + 1.5), rwidth=0.8)
    axes[0].set_xlabel("distinct captions per image")
    axes[0].set_ylabel("images")
    axes[1].hist(w[valid], bins=40)
    axes[1].set_xlabel("WFA uniqueness weight of a distinct caption")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def caption_report(config, workdir: str | pathlib.Path) -> pathlib.Path:
    """Writes `summary.json` and `captions.png` for the captioned pool of `config.data` and `config.text`."""
    data, text = build(DataSpec, config.data, "data"), build(TextSpec, config.text, "text")
    source = sources.make_pretrain_source(data, seed=config.seed, progress=False,
                                          text=text if text.enabled else None)
    columns = _columns(source)
    stats = caption_statistics(columns) | {"recipe": "captions", "source": repr(source)}
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    _plot(columns, out / "captions.png")
    (out / "summary.json").write_text(json.dumps(stats, indent=2))
    print(f"captions: {stats['distinct_captions']} distinct of {stats['captions']} ({100 * stats['repeat_share']:.1f} % "
          f"repeats), folding saves {100 * stats['token_saving']:.1f} % of text tokens -> {out}")
    return out
