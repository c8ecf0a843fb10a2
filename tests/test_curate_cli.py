"""The curation command line end to end: `launch.py --mode=embed` with a tiny release, then every
`--mode=curate` recipe on its output (files, shapes, kept sizes, determinism, named errors for bad
inputs), and the real MSTAR chips embedded and curated when `../shared/data` is present."""
import json
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest
from absl import flags

import launch
from configs import default
from curation import dedup, io as curation_io
from oceansar import release, sharding
from oceansar.data.selection import Selection
from oceansar.data.synthetic import SyntheticWV
from oceansar.experiment import Experiment, run_spec

POOL = 200  # not a multiple of the batch: the last batch is padded


def _launch(*argv):
    argv = ["launch.py", *argv]
    saved, sys.argv = sys.argv, argv  # config_flags finds `--config.x=` overrides in sys.argv
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        launch.main([])
    finally:
        sys.argv = saved
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # overrides are defined per parse; the next parse defines its own


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory) -> pathlib.Path:
    """A freshly initialised smoke-recipe teacher, exported as a release."""
    spec = run_spec(default.get_config("smoke"))
    state = Experiment.build(spec, num_samples=8).init_state()
    return release.export(tmp_path_factory.mktemp("release") / "release", teacher_params=state.teacher, spec=spec)


@pytest.fixture(scope="module")
def embeddings(release_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("embed") / "wv"
    _launch("--mode=embed", f"--config=configs/embed.py:release={release_dir},smoke",
            f"--config.data.num_samples={POOL}", f"--workdir={out}")
    return out


def test_embed_writes_normalised_features_in_source_order(embeddings, release_dir):
    x, ids = curation_io.load_embeddings(embeddings)
    spec = json.loads((release_dir / "config.json").read_text())["oceansar"]
    assert x.dtype == np.float16 and x.shape == (POOL, 32)
    np.testing.assert_array_equal(ids, np.arange(POOL))
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1.0, atol=2e-3)
    source = SyntheticWV(POOL, image_size=32, seed=0)
    np.testing.assert_array_equal(np.load(embeddings / "labels.npy"), source.labels())
    manifest = json.loads((embeddings / "embed.json").read_text())
    assert manifest["release"] == str(release_dir) and manifest["model"] == spec
    assert manifest["data"]["num_samples"] == POOL and manifest["dim"] == 32
    # The rows of the padded last batch equal a direct forward of those images.
    fn, params, _ = release.embedder(release_dir, l2_normalize=True)
    last = np.arange(POOL - 8, POOL)
    direct = np.asarray(fn(params, np.stack([source[int(i)]["image"] for i in last])))
    np.testing.assert_allclose(x[last].astype(np.float32), direct, atol=2e-3)


def test_hkmeans_hits_the_target_deterministically_and_loads_as_static_selection(embeddings, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        _launch("--mode=curate", f"--config=configs/curate_hkmeans.py:embeddings={embeddings},smoke,target_count=50",
                f"--workdir={run}")
    kept = np.load(runs[0] / "kept_indices.npy")
    np.testing.assert_array_equal(kept, np.load(runs[1] / "kept_indices.npy"))
    assert kept.shape == (50,) and np.all(np.diff(kept) > 0) and 0 <= kept[0] and kept[-1] < POOL
    for name in ("summary.json", "cluster_sizes.png", "kept_removed.png"):
        assert (runs[0] / name).is_file(), name
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["kept"] == 50 and summary["num_embeddings"] == POOL
    assert sum(summary["label_counts_after"]) == 50 and sum(summary["label_counts_before"]) == POOL
    # Water-filling over the top-level clusters: a cluster is taken whole or capped at the common level.
    before, after = np.array(summary["top_level_sizes_before"]), np.array(summary["top_level_sizes_after"])
    assert after.sum() == 50 and np.all((after == before) | (after >= after.max() - 1))

    selection = Selection.load(runs[0], num_samples=POOL)
    np.testing.assert_array_equal(selection.indices, kept)
    np.testing.assert_array_equal(selection.weights, np.ones(50, np.float32))
    with pytest.raises(ValueError, match=f"curated from {POOL} embeddings but the pretraining source has 512"):
        Selection.load(runs[0], num_samples=512)
    with pytest.raises(FileNotFoundError, match="kept_indices.npy not found"):
        Selection.load(tmp_path)


def test_semdedup_writes_the_chosen_eps_and_matches_the_kernel(embeddings, tmp_path):
    _launch("--mode=curate", f"--config=configs/curate_semdedup.py:embeddings={embeddings},smoke,eps=0.05",
            f"--workdir={tmp_path}")
    kept = np.load(tmp_path / "kept_indices.npy")
    summary = json.loads((tmp_path / "summary.json").read_text())
    per_eps = summary["kept_per_eps"]
    assert summary["kept"] == kept.size == per_eps["0.05"]
    assert list(per_eps.values()) == sorted(per_eps.values(), reverse=True)  # larger eps removes more
    x, _ = curation_io.load_embeddings(embeddings)
    direct = dedup.semdedup(np.asarray(x, np.float32), n_clusters=8, eps_list=[0.05], key=0, normalize=True,
                            kmeans_iters=5, units_per_call=64, mesh=sharding.make_mesh())
    np.testing.assert_array_equal(np.flatnonzero(direct.kept[:, 0]), kept)  # the kernel with the config's arguments


def test_rs_prune_with_embedded_or_given_reference(embeddings, tmp_path):
    _launch("--mode=curate", f"--config=configs/curate_rs_prune.py:embeddings={embeddings},smoke,target_count=30",
            f"--workdir={tmp_path / 'embedded'}")
    summary = json.loads((tmp_path / "embedded" / "summary.json").read_text())
    assert summary["kept"] == 30 and summary["reference_size"] == 40  # 4 simulated vignettes x 10 classes
    assert len(summary["scene_names"]) == 10 and sum(summary["scene_quota"]) == 30
    assert summary["entropy_survivors"] >= 0.8 * POOL  # the smoke cut drops the lowest 20 %
    assert np.load(tmp_path / "embedded" / "kept_indices.npy").shape == (30,)

    # The pool's own hidden labels as the reference: embeddings dir + labels.npy, no embedding run.
    _launch("--mode=curate", f"--config=configs/curate_rs_prune.py:embeddings={embeddings},smoke,target_count=30,"
            f"reference_embeddings={embeddings}", f"--workdir={tmp_path / 'given'}")
    summary = json.loads((tmp_path / "given" / "summary.json").read_text())
    assert summary["kept"] == 30 and summary["reference"] == str(embeddings)
    assert "embed_reference" not in summary["seconds"]


def _bad_embeddings(embeddings, tmp_path, name, x):
    bad = tmp_path / name
    shutil.copytree(embeddings, bad)
    np.save(bad / "X.npy", x)
    return bad


@pytest.mark.parametrize("case", ["missing", "nan_row", "k_too_large", "semdedup_k_too_large", "target_too_large",
                                  "dim_mismatch", "missing_labels", "source_mismatch", "missing_release",
                                  "bad_compute_dtype", "semdedup_bad_compute_dtype"])
def test_bad_inputs_fail_fast_naming_the_field(case, embeddings, tmp_path):
    x = np.load(embeddings / "X.npy")
    hk = f"--config=configs/curate_hkmeans.py:embeddings={embeddings},smoke"
    rs = f"--config=configs/curate_rs_prune.py:embeddings={embeddings},smoke"
    out = tmp_path / "out"
    if case == "missing":
        argv, match = ("--mode=curate", f"--config=configs/curate_hkmeans.py:embeddings={tmp_path / 'none'}"), \
            "embeddings file not found: .*none"
    elif case == "nan_row":
        x[7, 3] = np.nan
        bad = _bad_embeddings(embeddings, tmp_path, "nan", x)
        argv, match = ("--mode=curate", f"--config=configs/curate_semdedup.py:embeddings={bad},smoke"), \
            "X.npy: row 7 .* NaN/Inf"
    elif case == "k_too_large":
        argv, match = ("--mode=curate", hk, "--config.hkmeans.n_clusters=(500, 4)"), \
            rf"config.hkmeans.n_clusters\[0\]=500 exceeds the {POOL} embeddings"
    elif case == "semdedup_k_too_large":
        argv, match = ("--mode=curate", f"--config=configs/curate_semdedup.py:embeddings={embeddings}",
                              "--config.semdedup.n_clusters=1000"), \
            rf"config.semdedup.n_clusters=1000 must lie in \[1, {POOL}\]"
    elif case == "target_too_large":
        argv, match = ("--mode=curate", hk + ",target_count=1000"), \
            f"config.target_count=1000 exceeds the {POOL} embeddings"
    elif case == "dim_mismatch":
        ref = _bad_embeddings(embeddings, tmp_path, "ref16", x[:, :16])
        argv, match = ("--mode=curate", rs + f",reference_embeddings={ref}"), \
            "dimension mismatch: .* d=32 .*ref16 has d=16"
    elif case == "missing_labels":
        ref = _bad_embeddings(embeddings, tmp_path, "unlabelled", x)
        (ref / "labels.npy").unlink()
        argv, match = ("--mode=curate", rs + f",reference_embeddings={ref}"), \
            "config.rs_prune.reference.labels: .*unlabelled/labels.npy not found"
    elif case == "source_mismatch":
        argv, match = ("--mode=curate", hk, "--config.data.source=synthetic_wv",
                              "--config.data.num_samples=100"), \
            f"config.data: .* has 100 samples but .* holds {POOL} embeddings"
    elif case == "bad_compute_dtype":
        argv, match = ("--mode=curate", hk, "--config.hkmeans.compute_dtype=float16"), \
            r"config.hkmeans.compute_dtype='float16'; known: \('float32', 'bfloat16'\)"
    elif case == "semdedup_bad_compute_dtype":
        argv, match = ("--mode=curate", f"--config=configs/curate_semdedup.py:embeddings={embeddings},smoke",
                              "--config.semdedup.compute_dtype=bf16"), \
            r"config.semdedup.compute_dtype='bf16'; known: \('float32', 'bfloat16'\)"
    else:
        argv, match = ("--mode=embed", f"--config=configs/embed.py:release={tmp_path / 'nope'}"), \
            "config.release: .*nope/config.json or .*model.safetensors not found"
    with pytest.raises(SystemExit) as exit_:  # one line, no traceback: the error is the user's to fix
        _launch(*argv, f"--workdir={out}")
    assert str(exit_.value.code).startswith("error: ") and re.search(match, str(exit_.value.code))
    assert not out.exists()  # failed before writing anything


def test_mstar_chips_embedded_and_curated_end_to_end(shared_data, release_dir, tmp_path):
    train = shared_data / "mstar10" / "train"
    if not train.is_dir():
        pytest.skip(f"MSTAR chips not found at {train}")
    _launch("--mode=embed", f"--config=configs/embed.py:release={release_dir},smoke,source=folder,root={train}",
            f"--workdir={tmp_path / 'embed'}")
    x, _ = curation_io.load_embeddings(tmp_path / "embed")
    labels = np.load(tmp_path / "embed" / "labels.npy")
    assert x.shape[0] == labels.shape[0] == 2746 and np.bincount(labels).size == 10
    _launch("--mode=curate", f"--config=configs/curate_hkmeans.py:embeddings={tmp_path / 'embed'},smoke",
            f"--workdir={tmp_path / 'hkmeans'}")
    kept = np.load(tmp_path / "hkmeans" / "kept_indices.npy")
    summary = json.loads((tmp_path / "hkmeans" / "summary.json").read_text())
    assert kept.size == summary["kept"] == round(0.25 * 2746)
    assert summary["kept_removed_plot"].endswith("kept_removed.png")
    assert (tmp_path / "hkmeans" / "kept_removed.png").is_file()
    assert Selection.load(tmp_path / "hkmeans", num_samples=2746).indices.size == kept.size
