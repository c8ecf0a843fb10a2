"""Image-text pretraining (WFA): the recipe end to end, its batches, and its config rules."""
import json

import jax
import numpy as np
import pytest

from configs import wfa
from conftest import launch_and_kill
from oceansar import release, sharding
from oceansar.apps.pretrain import pretrain
from oceansar.data import pipeline, sources
from oceansar.data.selection import Selection
from oceansar.errors import ConfigError
from oceansar.evals.image_text import retrieval_metrics, zero_shot_accuracy
from oceansar.experiment import Experiment, restore_latest, run_spec
from oceansar.spec import RunSpec


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_image_text_batches_carry_the_caption_fields():
    c = wfa.get_config("smoke")
    spec = run_spec(c)
    pool = sources.make_pretrain_source(spec.data, seed=spec.seed, progress=False, text=spec.text)
    record = pool[3]
    m, length = c.text.max_captions, c.text.context_length
    assert record["caption_ids"].shape == (m, length) and record["caption_valid"].shape == (m,)
    # The in-memory cache keeps the array fields, not only the scalars.
    assert pool.read_batch([1, 3])["caption_ids"].shape == (2, m, length)
    exp = Experiment.build(spec, num_samples=len(pool), tokenizer=pool.tokenizer)
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
    c.evals.wv.probes = ("knn", "retrieval")
    with pytest.raises(ConfigError, match="config.evals.wv.probes: an evaluator runs frozen-feature probes"):
        RunSpec.from_config(c)
    c = wfa.get_config("smoke")
    c.text.capacity = 9.0
    with pytest.raises(ConfigError, match=r"config.text.capacity: must lie in \[1, max_captions=5\]"):
        RunSpec.from_config(c)
    c = wfa.get_config("smoke")
    c.text.caption_loss = -1.0
    with pytest.raises(ConfigError, match="config.text.caption_loss: must be >= 0"):
        RunSpec.from_config(c)


def test_retrieval_and_zero_shot_against_brute_force():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(9, 6))
    counts = rng.integers(1, 5, 9)                                  # ragged: 1 to 4 captions per image
    caption_image = np.repeat(np.arange(9), counts)
    captions = images[caption_image] + rng.normal(scale=1.2, size=(caption_image.size, 6))
    got = retrieval_metrics(images, captions, caption_image)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = unit(captions) @ unit(images).T                           # [captions, images]
    t2i_rank = np.array([np.sum(row > row[i]) for row, i in zip(sim, caption_image)])
    i2t_rank = np.array([min(np.sum(sim[:, q] > sim[c, q]) for c in np.flatnonzero(caption_image == q))
                         for q in range(9)])
    for k in (1, 5, 10):
        assert got[f"t2i_r@{k}"] == pytest.approx(np.mean(t2i_rank < k))
        assert got[f"i2t_r@{k}"] == pytest.approx(np.mean(i2t_rank < k))
    assert got["mR"] == pytest.approx(np.mean([got[f"{d}_r@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10)]))
    prompts = rng.normal(size=(3, 6))
    labels = rng.integers(0, 3, 9)
    want = np.mean(np.argmax(unit(images) @ unit(prompts).T, axis=1) == labels)
    assert zero_shot_accuracy(images, labels, prompts) == pytest.approx(want)


KILLED = {"total_examples": 16 * 12, "checkpoint_every_steps": 4, "evals.wv.every_examples": 0,
          "evals.captions.every_examples": 0, "eval_at_init": False}


def test_wfa_trains_on_folded_captions_and_resumes_after_kill_bit_identical(tmp_path):
    c = wfa.get_config("smoke,weights=attention")
    for field, value in KILLED.items():
        block, _, name = field.rpartition(".")
        (c[block] if block else c)[name] = value
    summary = pretrain(c, tmp_path / "straight")
    assert summary["examples_seen"] == c.total_examples
    train = [r for r in _metrics(tmp_path / "straight") if "train/loss" in r]
    for r in train:
        assert np.isfinite(r["train/loss"]) and r["train/captions_dropped"] >= 0
        # Folding repeats: the text tower runs on fewer tokens than every original caption holds.
        assert 0 < r["train/text_tokens_encoded"] < r["train/text_tokens_all_captions"]
    # The image tower's frozen-feature probes and the two towers' retrieval and zero-shot, on captioned splits.
    final = summary["final"]
    assert "wv/knn/top1_k1" in final and 0 <= final["captions/retrieval/mR"] <= 1
    assert 0 <= final["captions/zero_shot/top1"] <= 1

    killed = tmp_path / "killed"
    launch_and_kill(["--config=configs/wfa.py:smoke,weights=attention", f"--workdir={killed}",
                     *[f"--config.{k}={v}" for k, v in KILLED.items()]], killed, at_step=4)
    pretrain(c, killed)
    states = [jax.device_get(restore_latest(run_spec(c), d)[1]) for d in (tmp_path / "straight", killed)]
    for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(x, y)

    # The release holds both towers and the tokenizer: its text features are the trained model's.
    model, tokenizer, spec = release.load_image_text(tmp_path / "straight" / "release")
    exp, state, _ = restore_latest(run_spec(c), tmp_path / "straight")
    ids = tokenizer.encode(["sar image of ocean swell", "sea ice"], spec["text"]["context_length"])
    np.testing.assert_allclose(model.encode_text(ids), exp.image_text_fns()[1](state.teacher, ids), atol=1e-5)
    assert tokenizer.to_json() == exp.tokenizer.to_json()


def test_wfa_step_on_one_device_equals_eight():
    # Packing gathers the distinct captions of the global batch; the losses reduce over it: 8 devices train what 1
    # does, for the learned aggregation and the sigmoid loss too.
    c = wfa.get_config("smoke,weights=attention")
    c.text.loss = "siglip"
    spec = run_spec(c)
    pool = sources.make_pretrain_source(spec.data, seed=c.seed, progress=False, text=spec.text)
    batches = list(iter(pipeline.epoch_dataset(pool, Selection.full(len(pool)), seed=0, epoch=0,
                                               batch_size=c.batch_size)))[:2]
    losses = {}
    for n in (1, 8):
        c.num_devices = n
        exp = Experiment.build(run_spec(c), num_samples=len(pool), tokenizer=pool.tokenizer)
        state, train_step = exp.init_state(), exp.compile_train_step(np.uint8)
        out = []
        for batch in batches:
            state, _, per_sample = train_step(state, sharding.shard_batch(exp.mesh, {k: batch[k] for k in
                                                                                    exp.batch_spec(np.uint8)}))
            out.append(np.asarray(per_sample))
        losses[n] = np.stack(out)
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-4, atol=2e-4)


def test_caption_report_counts_repeats_and_token_savings(tmp_path):
    from configs import curate_captions
    from oceansar.apps.curate import curate

    c = curate_captions.get_config("smoke")
    c.text.repeat_fraction = 0.5                           # 5 captions: 2 repeats, 3 distinct per image
    curate(c, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["images"] == c.data.num_samples and s["captions"] == 5 * s["images"]
    assert s["distinct_per_image"] == {"3": s["images"]} and s["repeat_share"] == pytest.approx(0.4)
    assert 0 < s["tokens_distinct_captions"] < s["tokens_all_captions"] and 0.3 < s["token_saving"] < 0.5
    assert (tmp_path / "captions.png").stat().st_size > 0
