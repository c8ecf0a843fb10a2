"""Pruning policies: InfoBatch's rules exactly, the random baseline, cluster-balanced subsets, their
composition as a plan and a decision, and all of them inside the loop (resume through a resampling
included)."""
import dataclasses
import json

import numpy as np
import pytest

from oceansar.apps.pretrain import pretrain
from oceansar.data.selection import Selection
from oceansar.pruning import policies
from oceansar.pruning.report import selection_summary
from oceansar.spec import PruningSpec, build
from oceansar.train import loop


def _table(score, count):
    return {"score": np.asarray(score, np.float32), "count": np.asarray(count, np.int32)}


def _spec(**overrides) -> PruningSpec:
    from configs import default

    # The CLS path by default: the tests plant their own embeddings.
    return dataclasses.replace(build(PruningSpec, default.get_config().pruning, "pruning"),
                               **{"features": "cls", **overrides})


def test_infobatch_drops_below_mean_and_rescales():
    n = 1000
    rng = np.random.default_rng(0)
    score = rng.normal(size=n)
    count = np.ones(n, int)
    count[:100] = 0                                   # never seen: always kept
    policy = policies.InfoBatch(prune_ratio=0.5, delta=0.875, total_examples=10_000, seed=0)
    full = Selection.full(n)
    sel = policy.apply(full, 3, examples_seen=1000, loss_table=_table(score, count))

    seen = count > 0
    well = np.flatnonzero(seen & (score < score[seen].mean()))
    rest = np.setdiff1d(np.arange(n), well)
    kept_well = np.intersect1d(sel.indices, well)
    assert np.all(np.isin(rest, sel.indices))          # every other sample is kept
    assert kept_well.size == int(np.floor(0.5 * well.size))
    assert np.array_equal(np.sort(sel.indices), np.unique(sel.indices))
    weights = dict(zip(sel.indices.tolist(), sel.weights.tolist()))
    assert all(weights[i] == 2.0 for i in kept_well) and all(weights[i] == 1.0 for i in rest)
    # Deterministic per (seed, epoch), different across epochs.
    again = policy.apply(full, 3, examples_seen=1000, loss_table=_table(score, count))
    other = policy.apply(full, 4, examples_seen=1000, loss_table=_table(score, count))
    assert np.array_equal(sel.indices, again.indices) and not np.array_equal(sel.indices, other.indices)


def test_infobatch_first_epoch_and_annealing_are_full_data():
    policy = policies.InfoBatch(prune_ratio=0.5, delta=0.875, total_examples=1000, seed=0)
    full = Selection.full(10)
    unseen = policy.apply(full, 0, examples_seen=0, loss_table=_table(np.zeros(10), np.zeros(10)))
    assert len(unseen) == 10 and np.all(unseen.weights == 1)
    assert not policy.reads_table(875)
    late = policy.apply(full, 9, examples_seen=875, loss_table=None)  # the table is not read
    assert np.array_equal(late.indices, np.arange(10)) and np.all(late.weights == 1)


def test_infobatch_keep_ratio_is_clipped():
    policy = policies.InfoBatch(prune_ratio=0.99, delta=1.0, total_examples=100, seed=0)
    assert policy.keep_ratio == pytest.approx(0.1)


def test_infobatch_inside_a_subset_uses_the_subset_mean_and_keeps_its_weights():
    score = np.arange(100, dtype=np.float32)             # the pool's mean (49.5) is not the subset's
    pool = Selection(np.arange(60, 100), np.full(40, 3.0))
    policy = policies.InfoBatch(prune_ratio=0.5, delta=1.0, total_examples=100, seed=0)
    sel = policy.apply(pool, 1, examples_seen=10, loss_table=_table(score, np.ones(100)))
    well = np.arange(60, 80)                              # below the subset's mean 79.5
    assert np.all(np.isin(np.arange(80, 100), sel.indices))
    assert np.intersect1d(sel.indices, well).size == 10 and np.all(np.isin(sel.indices, pool.indices))
    weights = dict(zip(sel.indices.tolist(), sel.weights.tolist()))
    assert all(weights[i] == 6.0 for i in np.intersect1d(sel.indices, well))
    assert all(weights[i] == 3.0 for i in range(80, 100))


def test_policy_names_parse_into_subset_and_loss_rule():
    assert (_spec(policy="cluster_balanced+infobatch").subset, _spec(policy="cluster_balanced+infobatch").rule) \
        == ("cluster_balanced", "infobatch")
    assert (_spec(policy="infobatch").subset, _spec(policy="infobatch").rule) == ("none", "infobatch")
    assert (_spec(policy="random").subset, _spec(policy="random").rule) == ("random", None)
    with pytest.raises(ValueError, match="policy"):
        _spec(policy="infobatch+random")


def test_random_subset_size_and_determinism():
    pruner = policies.Pruner(_spec(policy="random", rho=0.25), num_samples=100, seed=1, total_examples=1000)
    needs = pruner.plan(0, 0, last_resampling_epoch=None)
    assert needs.embed is None and not needs.loss_table
    a, b = (pruner.decide(0, 0, previous=None, last_resampling_epoch=None) for _ in range(2))
    assert len(a.served) == 25 and np.array_equal(a.served.indices, b.served.indices) and a.report is None
    assert not np.array_equal(a.served.indices, pruner.decide(1, 0, previous=None,
                                                              last_resampling_epoch=None).served.indices)


def test_infobatch_in_the_training_loop(tmp_path, smoke_config):
    c = smoke_config
    c.data.num_samples = 64                        # 4 steps per full epoch
    c.pruning.policy = "infobatch"
    c.total_examples = 16 * 24
    c.pruning.delta = 0.5                          # full data again from 192 examples seen
    c.log_every_steps = 1
    c.evals.wv.every_examples = 0
    c.eval_at_init = False
    pretrain(c, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert train[0]["selection_size"] == 64 and train[0]["train/weight_mean"] == 1.0
    pruned = [r for r in train if r["selection_size"] < 64]
    assert pruned and max(r["train/weight_mean"] for r in pruned) > 1.0
    # The first epoch boundary after 192 examples (epochs are at most 64 examples) returns to full data.
    annealed = [r for r in train if r["examples_seen"] > 192 + 64]
    assert annealed and all(r["selection_size"] == 64 for r in annealed)


def _blobs(n, rng):
    """Unit vectors around 4 directions with very unequal densities (70/20/8/2 %)."""
    centers = np.eye(16, dtype=np.float32)[:4]
    labels = rng.choice(4, n, p=[0.7, 0.2, 0.08, 0.02])
    x = centers[labels] + 0.05 * rng.normal(size=(n, 16)).astype(np.float32)
    return x, labels


def test_cluster_balanced_then_infobatch_prunes_inside_the_subset():
    rng = np.random.default_rng(0)
    x, _ = _blobs(2000, rng)
    table = _table(rng.normal(size=2000), np.ones(2000))
    spec = _spec(policy="cluster_balanced+infobatch", rho=0.2, eta=0.5, warmup_examples=100, every_epochs=2,
                 subset_size=1000, n_clusters=(16, 4), n_resamples=1, prune_ratio=0.5, delta=0.9)
    pruner = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=1000)
    needs = pruner.plan(1, 150, last_resampling_epoch=None)
    assert needs.embed.shape == (1000,) and needs.loss_table
    d = pruner.decide(1, 150, previous=None, last_resampling_epoch=None, embeddings=x[needs.embed], loss_table=table)
    assert len(d.subset) == 400 and d.report["kept"] == 400
    assert sum(d.report["leaf_sizes_after"]) == 400 and sum(d.report["leaf_sizes_before"]) == 1000
    assert np.all(np.isin(d.served.indices, d.subset.indices)) and 200 < len(d.served) < 400
    assert set(np.unique(d.served.weights)) == {1.0, 2.0}
    # A non-resampling epoch embeds nothing, keeps the subset and redraws InfoBatch's drop inside it.
    needs2 = pruner.plan(2, 400, last_resampling_epoch=1)
    assert needs2.embed is None and needs2.loss_table
    d2 = pruner.decide(2, 400, previous=d.subset, last_resampling_epoch=1, loss_table=table)
    assert d2.subset is d.subset and d2.report is None and not np.array_equal(d.served.indices, d2.served.indices)
    # After delta of the budget the loss rule anneals to the whole subset and reads no table.
    assert pruner.plan(2, 900, last_resampling_epoch=1) == policies.Needs()
    d3 = pruner.decide(2, 900, previous=d.subset, last_resampling_epoch=1)
    assert d3.served is d3.subset is d.subset


def test_cluster_balanced_flattens_the_mix_and_follows_its_schedule():
    rng = np.random.default_rng(0)
    x, labels = _blobs(2000, rng)
    spec = _spec(policy="cluster_balanced", rho=0.2, eta=0.5, warmup_examples=100, every_epochs=2,
                 subset_size=1000, n_clusters=(16, 4), n_resamples=1)
    p = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=10_000)

    def step(epoch, seen, previous, last):
        needs = p.plan(epoch, seen, last_resampling_epoch=last)
        emb = None if needs.embed is None else x[needs.embed]
        return needs, p.decide(epoch, seen, previous=previous, last_resampling_epoch=last, embeddings=emb)

    needs, d = step(0, 50, None, None)                     # warm-up: full data, nothing embedded
    assert needs.embed is None and len(d.served) == 2000
    needs, a = step(1, 150, d.subset, None)
    assert len(needs.embed) == 1000 and len(a.served) == 400 and np.all(a.served.weights == 1)
    assert len(np.unique(a.served.indices)) == 400
    shares = np.bincount(labels[a.served.indices], minlength=4) / 400
    assert shares[0] < 0.45 and shares[3] > 0.05          # 70 % -> under 45 %, 2 % -> over 5 %
    # One epoch after a re-clustering: none, the previous subset is served again; T_s = 2 after: one.
    needs, same = step(2, 400, a.subset, 1)
    assert needs.embed is None and same.subset is a.subset
    needs, b = step(3, 500, a.subset, 1)
    assert len(needs.embed) == 1000 and not np.array_equal(a.served.indices, b.served.indices)
    again = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=10_000)
    assert np.array_equal(again.decide(3, 500, previous=a.subset, last_resampling_epoch=1,
                                       embeddings=x[needs.embed]).served.indices, b.served.indices)


def test_cluster_balanced_drops_near_copies_before_balancing():
    rng = np.random.default_rng(0)
    x, _ = _blobs(2000, rng)
    groups = np.repeat(np.arange(500), 4)                   # every pool image has 3 near-copies
    base = rng.normal(size=(500, 64))
    descriptors = base[groups] + 0.01 * rng.normal(size=(2000, 64))
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    served = {}
    for eps in (0.0, 0.05):
        spec = _spec(policy="cluster_balanced", rho=0.1, warmup_examples=0, every_epochs=1, subset_size=1000,
                     n_clusters=(16, 4), n_resamples=1, copy_dedup_eps=eps)
        p = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=10_000)
        needs = p.plan(0, 0, last_resampling_epoch=None)
        assert (needs.describe is not None) == (eps > 0)
        d = p.decide(0, 0, previous=None, last_resampling_epoch=None, embeddings=x[needs.embed],
                     descriptors=None if needs.describe is None else descriptors[needs.describe])
        served[eps] = np.bincount(groups[d.served.indices], minlength=500)
        if eps:
            assert d.report["after_copy_dedup"] == np.unique(groups[needs.embed]).size
    assert served[0.0].max() > 1 and served[0.05].max() == 1     # one image per duplicate group


def test_an_unsized_hierarchy_is_sized_from_what_it_clusters():
    rng = np.random.default_rng(0)
    x, _ = _blobs(2000, rng)
    spec = _spec(policy="cluster_balanced", rho=0.2, warmup_examples=0, subset_size=1000, n_clusters=(),
                 n_resamples=1)
    p = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=10_000)
    needs = p.plan(0, 0, last_resampling_epoch=None)
    d = p.decide(0, 0, previous=None, last_resampling_epoch=None, embeddings=x[needs.embed])
    assert d.report["levels"] == [1000 // 20, 1000 // 200] and len(d.served) == 400


def test_clustering_copy_descriptors_reads_no_teacher_embedding():
    rng = np.random.default_rng(0)
    x, _ = _blobs(2000, rng)
    decisions = {}
    for features in ("cls", "copy_descriptors"):
        spec = _spec(policy="cluster_balanced", rho=0.2, warmup_examples=0, subset_size=1000, n_clusters=(16, 4),
                     n_resamples=1, features=features)
        p = policies.Pruner(spec, num_samples=2000, seed=0, total_examples=10_000)
        needs = p.plan(0, 0, last_resampling_epoch=None)
        planned = needs.embed if features == "cls" else needs.describe
        assert (needs.embed is None) == (features == "copy_descriptors") and planned.shape == (1000,)
        decisions[features] = p.decide(0, 0, previous=None, last_resampling_epoch=None,
                                       embeddings=x[planned] if features == "cls" else None,
                                       descriptors=x[planned] if features != "cls" else None)
    # The same vectors give the same selection whichever name they come under.
    np.testing.assert_array_equal(decisions["cls"].served.indices, decisions["copy_descriptors"].served.indices)


class _Interrupt(Exception):
    pass


def test_cluster_balanced_resume_through_a_resampling(tmp_path, smoke_config, monkeypatch):
    # With InfoBatch inside the balanced subsets: the resumed run must restore the selection, the re-clustering
    # schedule and the loss table that InfoBatch reads.
    policy = "cluster_balanced+infobatch"
    c = smoke_config
    c.data.num_samples = 64
    c.pruning.policy = policy
    c.pruning.rho = 0.5                   # pruned epochs of 2 steps
    c.pruning.warmup_examples = 64        # one full epoch (4 steps), then re-clustering
    c.pruning.every_epochs = 2
    c.pruning.n_clusters = (8, 2)
    c.pruning.n_resamples = 1
    c.total_examples = 16 * 10
    c.checkpoint_every_steps = 3
    c.evals.wv.every_examples = 0
    c.eval_at_init = False
    pretrain(c, tmp_path / "straight")

    calls = {"n": 0}
    real = loop.sharding.shard_batch

    def interrupted(mesh, batch):
        calls["n"] += 1
        if calls["n"] == 8:               # after the checkpoint at step 6, inside pruned epochs
            raise _Interrupt()
        return real(mesh, batch)

    monkeypatch.setattr(loop.sharding, "shard_batch", interrupted)
    with pytest.raises(_Interrupt):
        pretrain(c, tmp_path / "resumed")
    monkeypatch.setattr(loop.sharding, "shard_batch", real)
    pretrain(c, tmp_path / "resumed")

    def log(d):
        return [(r["step"], r["selection_size"], r["train/loss"])
                for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    straight, resumed = log(tmp_path / "straight"), log(tmp_path / "resumed")
    assert straight == resumed
    sizes = {s for _, s, _ in straight}
    assert 64 in sizes and min(sizes) < 32           # full warm-up, then InfoBatch drops inside balanced halves
    summaries = [json.loads((d / "summary.json").read_text())["pruning"]
                 for d in (tmp_path / "straight", tmp_path / "resumed")]
    report = json.loads((tmp_path / "straight" / "pruning" / "resamplings.json").read_text())
    assert report == json.loads((tmp_path / "resumed" / "pruning" / "resamplings.json").read_text())
    assert summaries[0] == summaries[1] and summaries[0]["resamplings"] == len(report)
    epochs = [r["epoch"] for r in report]            # after the warm-up epoch, every T_s = 2 epochs
    assert epochs[0] == 1 and np.all(np.diff(epochs) == 2) and len(epochs) >= 2
    assert all(sum(r["leaf_sizes_after"]) == r["kept"] == 32 for r in report)
    assert (tmp_path / "straight" / "pruning.png").exists()


def test_selection_summary_reports_class_shares():
    from oceansar.data.synthetic import SyntheticWV

    source = SyntheticWV(num_samples=500, image_size=16, seed=0)
    sel = Selection.subset(np.arange(0, 500, 2))
    info = selection_summary(source, sel)
    shares = [v for k, v in info.items() if k.startswith("pruning/class_share/")]
    assert info["selection_size"] == 250 and len(shares) == 10
    assert sum(shares) == pytest.approx(1.0)
    expected = np.bincount(source.labels(sel.indices), minlength=10) / 250
    assert info["pruning/class_share/pure_ocean_waves"] == pytest.approx(expected[0])
