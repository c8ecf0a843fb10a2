"""Generated captions for the WV simulator, with known redundancy: an offline SAR image-text task.

Here live `SyntheticCaptioner`, which writes an image's m captions from its ground truth (TenGeoP phenomenon,
wind speed and direction, significant wave height Hs and its Douglas sea state, the Beaufort wind description, the
swell peak wavelength) through a few templates and paraphrases per fact, `wv_captions`, which applies it to
simulator indices without rendering, and `CaptionedSyntheticWV`, a captioned wrapper over `SyntheticWV` whose
records carry the same caption fields as `oceansar.data.captioned` (see `caption_fields` there).

Redundancy is a knob, so WFA's weighting and folding meet a known truth: of an image's m captions, about
`repeat_fraction * (m - 1)` are exact copies of another of its captions (so the image has
m - round(repeat_fraction * (m - 1)) distinct captions, rounded stochastically per image when not whole), and of
the distinct ones beyond the first (the full caption: phenomenon, wind, waves), about `paraphrase_fraction` restate
the same facts in other words (near-duplicates for BLEU) while the rest state another subset of the facts (truly
unique sentences). Everything is a pure function of (seed, index).

Directions use the image frame as a map: up (the first row) is north and +x, the range direction the radar looks
along, is east; the simulator's `wind_dir` is read as where the wind comes from, as in the CMOD relative angle it
drives (0 = looking upwind). The simulator has no geography, so this is a convention, stated once here. Numpy only
(plus the text processing `captioned` uses): never jax.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import string
from collections.abc import Sequence

import numpy as np

from oceansar.data.captioned import caption_fields
from oceansar.data.synthetic.scene import SI, TENGEOP_CLASSES, scene_parameters
from oceansar.data.synthetic.source import SyntheticWV
from oceansar.data.tokenizer import CaptionTokenizer, train_tokenizer

MAX_CAPTIONS = 16  # the templates give well over this many distinct sentences per image
_CAPTION_STREAM = 0x5C0C  # mixed into the per-image generator so captions never share draws with the scene

# Paraphrases of each TenGeoP phenomenon, in TENGEOP_CLASSES order.
PHENOMENA: tuple[tuple[str, ...], ...] = (
    ("ocean swell", "pure ocean waves", "open-ocean swell with no other features"),
    ("wind streaks", "wind rolls aligned with the wind", "streaks from boundary-layer rolls"),
    ("micro-convective cells", "small convective wind cells", "a cellular convection pattern"),
    ("rain cells", "convective rain cells", "rain cells with bright and dark patches"),
    ("biological slicks", "dark surfactant slicks", "natural slicks from biological films"),
    ("sea ice", "sea ice floes", "a sea-ice cover"),
    ("icebergs", "bright iceberg targets on open water", "small icebergs"),
    ("a low wind area", "calm low-wind water", "a dark low-wind patch"),
    ("an atmospheric front", "a wind front line", "an atmospheric front crossing the scene"),
    ("an oceanic front", "a sea surface current front", "a front between water masses"),
)
assert len(PHENOMENA) == len(TENGEOP_CLASSES)

# The full caption is "<opener>, <wind>, <waves>" (or waves before wind); its paraphrases change the templates.
_OPENERS = ("sar wave mode image of {phen}", "sentinel-1 wave mode vignette showing {phen}",
            "{phen} seen by a c-band sar in wave mode", "wave mode scene with {phen}")
_WIND = ("wind about {w} m/s from the {dir}", "a {w} m/s wind blowing from the {dir}",
         "winds near {w} m/s out of the {dir}", "{dir} wind of roughly {w} m/s")
_WAVES = ("significant wave height {hs} m", "hs about {hs} m", "{sea} sea with waves of {hs} m",
          "waves around {hs} m high")
# Distinct-fact captions: each states another subset of the facts, in its own words.
_FOCUS = ("the radar backscatter is dominated by {phen}", "{beaufort} of {w} m/s over the ocean",
          "{sea} sea state, swell wavelength about {wl} m", "wind blowing from the {dir} across the vignette",
          "{phen} under a {beaufort}", "peak swell of {wl} m wavelength under {w} m/s winds",
          "the ocean surface shows {phen}", "{beaufort} from the {dir}")

_COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")
# (upper bound, name): Beaufort scale in m/s and Douglas sea scale in metres of Hs.
_BEAUFORT = ((0.5, "calm"), (1.6, "light air"), (3.4, "light breeze"), (5.5, "gentle breeze"),
             (8.0, "moderate breeze"), (10.8, "fresh breeze"), (13.9, "strong breeze"), (17.2, "near gale"),
             (20.8, "gale"), (24.5, "strong gale"), (math.inf, "storm"))
_DOUGLAS = ((0.1, "calm"), (0.5, "smooth"), (1.25, "slight"), (2.5, "moderate"), (4.0, "rough"),
            (6.0, "very rough"), (9.0, "high"), (14.0, "very high"), (math.inf, "phenomenal"))


def _scale(value: float, table: tuple[tuple[float, str], ...]) -> str:
    return next(name for bound, name in table if value < bound)


def compass_from(wind_dir: float) -> str:
    """The 8-point compass direction the wind comes from, for the simulator's `wind_dir` (radians, image frame;
    see the module docstring for the convention)."""
    # The "from" vector (cos, sin) in (x = east, y = rows = south): bearing clockwise from north.
    bearing = math.degrees(math.atan2(math.cos(wind_dir), -math.sin(wind_dir))) % 360.0
    return _COMPASS[int(math.floor(bearing / 45.0 + 0.5)) % 8]


def caption_facts(label: int, wind_speed: float, hs: float, wind_dir: float, peak_wavelength: float) -> dict:
    """The caption vocabulary of one image's truth: numbers rounded as every caption states them.

    Returns:
        dict of `label`, `w` (wind speed in whole m/s), `dir`, `beaufort`, and except over sea ice (no open-water
        waves to speak of) `hs` (one decimal, m), `sea` (Douglas) and `wl` (swell wavelength, nearest 10 m).
    """
    facts = {"label": int(label), "w": str(int(math.floor(float(wind_speed) + 0.5))),
             "dir": compass_from(float(wind_dir)), "beaufort": _scale(float(wind_speed), _BEAUFORT)}
    if int(label) != SI:
        facts.update(hs=f"{float(hs):.1f}", sea=_scale(float(hs), _DOUGLAS),
                     wl=str(int(round(float(peak_wavelength), -1))))
    return facts


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _stochastic_round(x: float, u: float) -> int:
    return int(math.floor(x)) + int(u < x - math.floor(x))


@dataclasses.dataclass(frozen=True)
class SyntheticCaptioner:
    """Writes an image's `num_captions` captions from its facts, with the redundancy the knobs ask for.

    Attributes:
        num_captions: m, captions per image (1 to `MAX_CAPTIONS`).
        repeat_fraction: in [0, 1]: the share of the m - 1 captions beyond the first that are exact copies of another
            caption of the image (0: m distinct captions; 1: one caption m times).
        paraphrase_fraction: in [0, 1]: the share of the distinct captions beyond the first that restate the full
            caption's facts in other words; the rest state other subsets of the facts.
        seed: with the image index, fixes every choice.
    """

    num_captions: int = 5
    repeat_fraction: float = 0.4
    paraphrase_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 1 <= int(self.num_captions) <= MAX_CAPTIONS:
            raise ValueError(f"num_captions must be in [1, {MAX_CAPTIONS}], got {self.num_captions}")
        for name in ("repeat_fraction", "paraphrase_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(index), _CAPTION_STREAM]))

    def num_distinct(self, index: int) -> int:
        """How many distinct captions image `index` gets: m - repeats, repeats = repeat_fraction * (m - 1) rounded
        stochastically from (seed, index)."""
        return self._plan(self._rng(index))[0]

    def _plan(self, rng: np.random.Generator) -> tuple[int, int]:
        """(distinct captions, paraphrases among them), the first draws of the image's generator."""
        m = int(self.num_captions)
        distinct = m - _stochastic_round(float(self.repeat_fraction) * (m - 1), rng.random())
        paraphrases = _stochastic_round(float(self.paraphrase_fraction) * (distinct - 1), rng.random())
        return distinct, paraphrases

    def captions(self, index: int, facts: dict) -> list[str]:
        """The captions of image `index` with truth `facts` (from `caption_facts`), in a shuffled order.

        Returns:
            `num_captions` lowercase single-spaced strings (already in `normalize_caption` form), exactly
            `num_distinct(index)` of them distinct.
        """
        rng = self._rng(index)
        distinct, paraphrases = self._plan(rng)
        phrases = PHENOMENA[facts["label"]]
        full = self._full_captions(rng, facts, phrases)
        out = [next(full)]
        out += _take_new(full, paraphrases, out)
        out += _take_new(itertools.chain(self._focus_captions(rng, facts, phrases), full), distinct - len(out), out)
        copies = [out[int(j)] for j in rng.integers(0, distinct, size=int(self.num_captions) - distinct)]
        everything = out + copies
        return [everything[int(j)] for j in rng.permutation(len(everything))]

    @staticmethod
    def _full_captions(rng: np.random.Generator, facts: dict, phrases: Sequence[str]):
        """Every wording of the full caption (opener, wind, waves), in a random order."""
        waves = _WAVES if "hs" in facts else ("",)
        combos = list(itertools.product(range(len(_OPENERS)), range(len(_WIND)), range(len(waves)),
                                        range(len(phrases)), (False, True)))
        for k in rng.permutation(len(combos)):
            o, w, h, p, waves_first = combos[int(k)]
            parts = [_WIND[w].format(**facts), waves[h].format(**facts)]
            parts = [x for x in (parts[::-1] if waves_first else parts) if x]
            yield ", ".join([_OPENERS[o].format(**facts, phen=phrases[p])] + parts)

    @staticmethod
    def _focus_captions(rng: np.random.Generator, facts: dict, phrases: Sequence[str]):
        """Captions stating other subsets of the facts (those the image has), in a random order."""
        usable = [t for t in _FOCUS if _fields(t) - {"phen"} <= set(facts)]
        combos = [(t, p) for t in usable for p in (range(len(phrases)) if "phen" in _fields(t) else (0,))]
        for k in rng.permutation(len(combos)):
            template, p = combos[int(k)]
            yield template.format(**facts, phen=phrases[p])


def _take_new(candidates, count: int, seen: list[str]) -> list[str]:
    """The first `count` candidates not in `seen` (nor repeated among themselves)."""
    out: list[str] = []
    if count <= 0:
        return out
    taken = set(seen)
    for text in candidates:
        if text not in taken:
            taken.add(text)
            out.append(text)
            if len(out) == count:
                return out
    raise RuntimeError(f"the caption templates ran out after {len(out)} of {count} new captions")


def wv_captions(source: SyntheticWV, indices: Sequence[int], captioner: SyntheticCaptioner) -> list[list[str]]:
    """The captions of simulator images `indices`, from their truth, without rendering.

    Args:
        source: the simulator.
        indices: image indices.
        captioner: the caption writer (its `seed` and the index fix the wording).

    Returns:
        One list of `captioner.num_captions` captions per index.
    """
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
        raise IndexError(f"indices must lie in [0, {len(source)}), got min {idx.min()} max {idx.max()}")
    # render=True only adds the direction and wavelength draws; nothing is rendered.
    p = scene_parameters(source.seed, idx, burst_length=source.burst_length, burst_jitter=source.burst_jitter,
                         class_frequencies=source.class_frequencies, balanced=source.balanced, render=True)
    return [captioner.captions(int(i), caption_facts(p["label"][k], p["wind_speed"][k], p["hs"][k],
                                                     p["wind_dir"][k], p["peak_wavelength"][k]))
            for k, i in enumerate(idx)]


class CaptionedSyntheticWV:
    """`SyntheticWV` records plus generated captions: the simulator as an image-text dataset.

    Records: the simulator's (`image` uint8 [S, S, 1], `sample_id` int64, `label` int32, `wind_speed` float32,
    `hs` float32) and the caption fields of `oceansar.data.captioned` (`caption_ids` int32 [m, L], `caption_valid`
    bool [m], `caption_count` int32 [m], `caption_weights` float32 [m], `caption_tokens` int32 []), m =
    `captioner.num_captions`. Captions, weights and ids are computed when a record is read (N can be millions; a
    record's text costs about a millisecond, less than rendering its image), from (seed, index) alone.

    Args:
        base: the simulator.
        tokenizer: the tokenizer (from `with_new_tokenizer` on the training pool, shared with evaluation splits).
        captioner: the caption writer; None: `SyntheticCaptioner(seed=base.seed)`.
        context_length: L, ids per caption row (the longest full captions take about 50 ids with a 512-token
            vocabulary: 64 truncates none).
        eps: the uniqueness floor of the WFA weights.
    """

    def __init__(self, base: SyntheticWV, tokenizer: CaptionTokenizer, *, captioner: SyntheticCaptioner | None = None,
                 context_length: int = 64, eps: float = 0.01):
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {context_length}")
        self.base = base
        self.tokenizer = tokenizer
        self.captioner = captioner if captioner is not None else SyntheticCaptioner(seed=base.seed)
        self.context_length = int(context_length)
        self.max_captions = int(self.captioner.num_captions)
        self.eps = float(eps)

    @classmethod
    def with_new_tokenizer(cls, base: SyntheticWV, *, vocab_size: int = 512, fit_images: int = 2048,
                           min_frequency: int = 2, **kwargs) -> "CaptionedSyntheticWV":
        """The training pool's source, with a tokenizer trained on the captions of its first `fit_images` images
        (the templates' vocabulary is complete long before that; numbers are byte-level tokens anyway).

        Args:
            base: the simulator (the training pool).
            vocab_size: the tokenizer's largest vocabulary.
            fit_images: images whose captions train the tokenizer.
            min_frequency: the fewest occurrences of a merged pair.
            **kwargs: the other constructor arguments.
        """
        captioner = kwargs.get("captioner") or SyntheticCaptioner(seed=base.seed)
        texts = wv_captions(base, np.arange(min(int(fit_images), len(base))), captioner)
        tokenizer = train_tokenizer([c for caps in texts for c in caps], vocab_size, min_frequency=min_frequency)
        return cls(base, tokenizer, **{**kwargs, "captioner": captioner})

    def __len__(self) -> int:
        return len(self.base)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.base.class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def labels(self, indices=None) -> np.ndarray:
        """TenGeoP class of `indices` (all when None), without rendering."""
        return self.base.labels(indices)

    def targets(self, indices=None) -> dict[str, np.ndarray]:
        """The simulator's hidden truth (`label`, `wind_speed`, `hs`), without rendering."""
        return self.base.targets(indices)

    def groups(self, indices=None) -> np.ndarray:
        """The simulator's near-duplicate bursts."""
        return self.base.groups(indices)

    def captions(self, index: int) -> list[str]:
        """The generated captions of image `index` (retrieval queries)."""
        return wv_captions(self.base, [int(index)], self.captioner)[0]

    def caption_record(self, index: int) -> dict[str, np.ndarray]:
        """The caption fields of image `index`, without rendering it."""
        return caption_fields(self.captions(index), self.tokenizer, max_captions=self.max_captions,
                              context_length=self.context_length, eps=self.eps)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self.base[index]
        record.update(self.caption_record(int(record["sample_id"])))
        return record

    def __repr__(self) -> str:
        return (f"CaptionedSyntheticWV({self.base!r}, {self.captioner!r}, L={self.context_length}, "
                f"vocab={self.tokenizer.vocab_size})")

