r"""The caption report of a captioned pool: distinct captions per image, WFA weights, the tokens folding saves.

    python launch.py --mode=curate --config=configs/curate_captions.py --workdir=runs/captions_wv   # simulator
    python launch.py --mode=curate --config=configs/curate_captions.py:data=ucm,data_root=../shared/data \
        --workdir=runs/captions_ucm                                                                 # UCM-captions

Reads the pool exactly as `configs/wfa.py` trains on it (the same `data` and `text` blocks) and writes
`summary.json` and `captions.png` (`oceansar.apps.caption_report`); nothing is selected.
"""
from __future__ import annotations

import ml_collections

from configs import common, wfa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, data="simulator", data_root="../shared/data", smoke=False)
    train = wfa.get_config(f"data={arg.data},data_root={arg.data_root},smoke={arg.smoke}")
    c = ml_collections.ConfigDict()
    c.name = "curate_captions"
    c.recipe = "captions"
    c.seed = train.seed
    c.data = train.data
    c.text = train.text
    return c
