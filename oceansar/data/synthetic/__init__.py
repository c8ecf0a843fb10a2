"""Embedded Sentinel-1 Wave Mode (WV) simulator, the default dataset of every oceansar recipe:
random-access single-channel VV vignettes whose image `i` is a pure function of `(seed, i)`, so N
can be millions at no disk cost, with the structure of the real archive (heavy-tailed TenGeoP
phenomenon frequencies, bursts of near-duplicates like neighbouring acquisitions along one orbit)
and hidden ground truth (`label`, `wind_speed`, `hs`) that visibly drives the image, so the
classification and both regression probes of OceanSAR-1 exist here too. `scene` holds the class
table, the instrument constants and the counter-based hash that draws each image's truth and
rendering parameters without rendering, plus the geophysical model function `gmf_db`; `render`
turns one image's parameters into sigma0 dB (wind, swell, per-class morphology, speckle) and
quantises it to uint8; `source` holds `SyntheticWV` and `evaluation_splits`; `captions` writes captions from
each image's truth with a redundancy knob (`CaptionedSyntheticWV`, imported from its module so the simulator alone
stays free of the tokenizer). The figure command
lives in `oceansar.apps.simulator_figure`. The package is numpy only, because Grain worker
processes import it: it must never import jax. The renderer itself is `render.render`, not
re-exported: the name would shadow the `render` submodule.
"""
from oceansar.data.synthetic.render import from_uint8, to_uint8
from oceansar.data.synthetic.scene import (
    AF, BS, DB_RANGE, DEFAULT_CLASS_FREQUENCIES, IB, INCIDENCE_DEG, LOOKS, LWA, MCC, NESZ_DB,
    OF, PIXEL_SIZE_M, POW, RC, SI, TENGEOP_CLASSES, WS, gmf_db, scene_parameters)
from oceansar.data.synthetic.source import SyntheticWV, evaluation_splits

__all__ = [
    "AF", "BS", "DB_RANGE", "DEFAULT_CLASS_FREQUENCIES", "IB", "INCIDENCE_DEG", "LOOKS", "LWA",
    "MCC", "NESZ_DB", "OF", "PIXEL_SIZE_M", "POW", "RC", "SI", "TENGEOP_CLASSES", "WS",
    "SyntheticWV", "evaluation_splits", "from_uint8", "gmf_db", "scene_parameters", "to_uint8",
]
