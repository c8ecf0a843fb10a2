"""Pruning policies: InfoBatch's rules exactly, the random baseline, cluster-balanced subsets, their
composition, and all of them inside the loop (resume through a resampling included)."""
import json

import numpy as np
import pytest

from oceansar.pruning import policies
from oceansar.train import loop


def _table(score, count):
    return lambda: {"score": np.asarray(score, np.float32), "count": np.asarray(count, np.int32)}


def test_infobatch_drops_below_mean_and_rescales():
    n = 1000
    rng = np.random.default_rng(0)
    score = rng.normal(size=n)
    count = np.ones(n, int)
    count[:100] = 0                                   # never seen: always kept
    policy = policies.InfoBatch(prune_ratio=0.5, delta=0.875, total_examples=10_000, seed=0)
    full = policies.Selection.full(n)
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
    full = policies.Selection.full(10)
    unseen = policy.apply(full, 0, examples_seen=0, loss_table=_table(np.zeros(10), np.zeros(10)))
    assert len(unseen) == 10 and np.all(unseen.weights == 1)
    late = policy.apply(full, 9, examples_seen=875, loss_table=pytest.fail)  # table not even read
    assert np.array_equal(late.indices, np.arange(10)) and np.all(late.weights == 1)


def test_infobatch_keep_ratio_is_clipped():
    policy = policies.InfoBatch(prune_ratio=0.99, delta=1.0, total_examples=100, seed=0)
    assert policy.keep_ratio == pytest.approx(0.1)


def test_infobatch_inside_a_subset_uses_the_subset_mean_and_keeps_its_weights():
    score = np.arange(100, dtype=np.float32)             # the pool's mean (49.5) is not the subset's
    pool = policies.Selection(np.arange(60, 100), np.full(40, 3.0))
    policy = policies.InfoBatch(prune_ratio=0.5, delta=1.0, total_examples=100, seed=0)
    sel = policy.apply(pool, 1, examples_seen=10, loss_table=_table(score, np.ones(100)))
    well = np.arange(60, 80)                              # below the subset's mean 79.5
    assert np.all(np.isin(np.arange(80, 100), sel.indices))
    assert np.intersect1d(sel.indices, well).size == 10 and np.all(np.isin(sel.indices, pool.indices))
    weights = dict(zip(sel.indices.tolist(), sel.weights.tolist()))
    assert all(weights[i] == 6.0 for i in np.intersect1d(sel.indices, well))
    assert all(weights[i] == 3.0 for i in range(80, 100))


def test_policy_names_parse_into_subset_and_loss_rule():
    assert policies.parse_policy("cluster_balanced+infobatch") == ("cluster_balanced", "infobatch")
    assert policies.parse_policy("infobatch") == ("none", "infobatch")
    assert policies.parse_policy("static") == ("static", None)
    with pytest.raises(ValueError, match="pruning.policy"):
        policies.parse_policy("infobatch+random")


def test_random_subset_size_and_determinism():
    p = policies.RandomSubset(100, rho=0.25, seed=1)
    a, b = p.select(0), p.select(0)
    assert len(a) == 25 and np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, p.select(1).indices)


def test_infobatch_in_the_training_loop(tmp_path, smoke_config):
    c = smoke_config
    c.data.num_samples = 64                        # 4 steps per full epoch
    c.pruning.policy = "infobatch"
    c.total_examples = 16 * 24
    c.pruning.delta = 0.5                          # full data again from 192 examples seen
    c.log_every_steps = 1
    c.eval.every_examples = 0
    c.eval.at_init = False
    loop.run(c, tmp_path)
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
    score = rng.normal(size=2000).astype(np.float32)
    table = _table(score, np.ones(2000))

    def embed(indices):
        return x[indices]

    class Pruning:  # the config fields make_policy reads
        policy, rho, eta, warmup_examples, every_epochs, subset_size = (
            "cluster_balanced+infobatch", 0.2, 0.5, 100, 2, 1000)
        n_clusters, n_resamples, prune_ratio, delta, selection = (16, 4), 1, 0.5, 0.9, ""

    pruner = policies.make_policy(Pruning, num_samples=2000, seed=0, total_examples=1000)
    subset, served = pruner.select(1, previous=None, examples_seen=150, embed=embed, loss_table=table)
    assert len(subset) == 400 and pruner.last_resampling["kept"] == 400
    assert sum(pruner.last_resampling["leaf_sizes_after"]) == 400
    assert sum(pruner.last_resampling["leaf_sizes_before"]) == 1000
    assert np.all(np.isin(served.indices, subset.indices)) and 200 < len(served) < 400
    assert set(np.unique(served.weights)) == {1.0, 2.0}
    # A non-resampling epoch keeps the subset and redraws InfoBatch's drop inside it.
    subset2, served2 = pruner.select(2, previous=subset, examples_seen=400, embed=pytest.fail,
                                     loss_table=table, last_resampling_epoch=1)
    assert subset2 is subset and not np.array_equal(served.indices, served2.indices)
    # After delta of the budget the loss rule anneals to the whole subset.
    subset3, served3 = pruner.select(2, previous=subset, examples_seen=900, embed=pytest.fail,
                                     loss_table=pytest.fail, last_resampling_epoch=1)
    assert served3 is subset3 is subset


def test_cluster_balanced_flattens_the_mix_and_follows_its_schedule():
    rng = np.random.default_rng(0)
    x, labels = _blobs(2000, rng)
    calls = []

    def embed(indices):
        calls.append(len(indices))
        return x[indices]

    p = policies.ClusterBalanced(2000, rho=0.2, eta=0.5, warmup_examples=100, every_epochs=2,
                                 subset_size=1000, n_clusters=(16, 4), n_resamples=1, seed=0)
    assert len(p.select(0, examples_seen=50, embed=embed)) == 2000 and not calls  # warm-up
    a = p.select(1, examples_seen=150, embed=embed, previous=policies.Selection.full(2000),
                 last_resampling_epoch=None)
    assert calls == [1000] and len(a) == 400 and np.all(a.weights == 1)
    assert len(np.unique(a.indices)) == 400
    shares = np.bincount(labels[a.indices], minlength=4) / 400
    assert shares[0] < 0.45 and shares[3] > 0.05          # 70 % -> under 45 %, 2 % -> over 5 %
    # One epoch after a re-clustering: none, the previous subset is served again; T_s = 2 after: one.
    assert p.select(2, examples_seen=400, embed=embed, previous=a, last_resampling_epoch=1) is a
    assert calls == [1000]
    b = p.select(3, examples_seen=500, embed=embed, previous=a, last_resampling_epoch=1)
    assert calls == [1000, 1000] and not np.array_equal(a.indices, b.indices)
    again = policies.ClusterBalanced(2000, rho=0.2, eta=0.5, warmup_examples=100, every_epochs=2,
                                     subset_size=1000, n_clusters=(16, 4), n_resamples=1, seed=0)
    assert np.array_equal(again.select(3, examples_seen=500, embed=embed, previous=a,
                                       last_resampling_epoch=1).indices, b.indices)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("policy", ["cluster_balanced", "cluster_balanced+infobatch"])
def test_cluster_balanced_resume_through_a_resampling(tmp_path, smoke_config, monkeypatch, policy):
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
    c.eval.every_examples = 0
    c.eval.at_init = False
    loop.run(c, tmp_path / "straight")

    calls = {"n": 0}
    real = loop.sharding.shard_batch

    def interrupted(mesh, batch):
        calls["n"] += 1
        if calls["n"] == 8:               # after the checkpoint at step 6, inside pruned epochs
            raise _Interrupt()
        return real(mesh, batch)

    monkeypatch.setattr(loop.sharding, "shard_batch", interrupted)
    with pytest.raises(_Interrupt):
        loop.run(c, tmp_path / "resumed")
    monkeypatch.setattr(loop.sharding, "shard_batch", real)
    loop.run(c, tmp_path / "resumed")

    def log(d):
        return [(r["step"], r["selection_size"], r["train/loss"])
                for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    straight, resumed = log(tmp_path / "straight"), log(tmp_path / "resumed")
    assert straight == resumed
    sizes = {s for _, s, _ in straight}
    if policy == "cluster_balanced":
        assert sizes == {64, 32}                     # full warm-up, then balanced halves
    else:
        assert 64 in sizes and min(sizes) < 32       # InfoBatch drops inside the balanced halves
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
    from oceansar.data.synthetic_wv import SyntheticWV

    source = SyntheticWV(num_samples=500, image_size=16, seed=0)
    sel = policies.Selection.subset(np.arange(0, 500, 2))
    info = loop.selection_summary(source, sel)
    shares = [v for k, v in info.items() if k.startswith("pruning/class_share/")]
    assert info["selection_size"] == 250 and len(shares) == 10
    assert sum(shares) == pytest.approx(1.0)
    expected = np.bincount(source.labels(sel.indices), minlength=10) / 250
    assert info["pruning/class_share/pure_ocean_waves"] == pytest.approx(expected[0])
