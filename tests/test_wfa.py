"""Image-text pretraining (WFA): the recipe end to end, its batches, and its config rules."""
import json

import numpy as np
import pytest

from configs import wfa
from oceansar.apps.pretrain import pretrain
from oceansar.data import sources
from oceansar.errors import ConfigError
from oceansar.experiment import Experiment, run_spec
from oceansar.spec import RunSpec


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_wfa_smoke_trains_on_folded_captions(tmp_path):
    c = wfa.get_config("smoke,weights=attention")
    summary = pretrain(c, tmp_path)
    assert summary["examples_seen"] == c.total_examples
    train = [r for r in _metrics(tmp_path) if "train/loss" in r]
    assert train and all(np.isfinite(r["train/loss"]) for r in train)
    for r in train:
        # Folding repeats: the text tower runs on fewer tokens than every original caption holds.
        assert 0 < r["train/text_tokens_encoded"] < r["train/text_tokens_all_captions"]
        assert r["train/captions_dropped"] >= 0
    # The released backbone is the image tower, which every evaluator and curation reads.
    assert "wv/knn/top1_k1" in summary["final"] and (tmp_path / "release" / "model.json").is_file()


def test_image_text_batches_carry_the_caption_fields():
    c = wfa.get_config("smoke")
    spec = run_spec(c)
    pool = sources.make_pretrain_source(spec.data, seed=spec.seed, progress=False, text=spec.text)
    record = pool[3]
    m, length = c.text.max_captions, c.text.context_length
    assert record["caption_ids"].shape == (m, length) and record["caption_valid"].shape == (m,)
    # The in-memory cache keeps the array fields, not only the scalars.
    assert pool.read_batch([1, 3])["caption_ids"].shape == (2, m, length)
    exp = Experiment.build(spec, num_samples=len(pool))
    batch = exp.batch_spec(np.uint8)
    assert batch["caption_ids"].shape == (c.batch_size, m, length) and batch["caption_tokens"].shape == (c.batch_size,)


def test_image_text_config_rules_name_their_field():
    c = wfa.get_config("smoke")
    c.data.source, c.data.root = "folder", "/nowhere"
    with pytest.raises(ConfigError, match="config.text.enabled: image-text runs read the captions source"):
        RunSpec.from_config(c)
    c = wfa.get_config("smoke")
    c.data.duplication.scheme = "uniform"
    with pytest.raises(ConfigError, match="config.text.enabled: data.pool_transform and data.duplication"):
        RunSpec.from_config(c)
    c = wfa.get_config("smoke")
    c.text.enabled, c.data.source, c.data.root = False, "captions", "/nowhere"
    with pytest.raises(ConfigError, match="config.data.source: the captions source feeds image-text runs"):
        RunSpec.from_config(c)
    c = wfa.get_config("smoke")
    c.text.capacity = 9.0
    with pytest.raises(ConfigError, match=r"config.text.capacity: must lie in \[1, max_captions=5\]"):
        RunSpec.from_config(c)
