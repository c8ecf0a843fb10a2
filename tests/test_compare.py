"""`--mode=compare` end to end at a tiny scale: every method, the shared warm-up, the table and figures."""
import json

import numpy as np
import pytest

from configs import compare as compare_config
from oceansar.apps import compare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    c = compare_config.get_config("smoke,seeds=1")
    # The random subset and InfoBatch run in test_policies and test_train_loop; hierarchical k-means keeps a
    # quarter by its method parameter (pruning.rho is a half).
    c.compare.methods = ("full", "static_semdedup", "static_hkmeans@rho=0.25", "dynamic")
    workdir = tmp_path_factory.mktemp("compare")
    raw = compare.compare(c, workdir)
    return c, workdir, raw


def test_every_method_trains_the_same_budget_from_one_warmup(tiny):
    c, workdir, raw = tiny
    prefix = raw["prefix_steps"]
    assert prefix == 4                                   # T_w = 64 examples = one epoch of 4 steps
    for method in c.compare.methods:
        summary = json.loads((workdir / "seed0" / method / "summary.json").read_text())
        assert summary["examples_seen"] == c.total_examples
        config = json.loads((workdir / "seed0" / method / "config.json").read_text())
        assert config["pruning"]["policy"] == compare.METHODS[compare.parse_method(method)[0]]
        # The run continued the warm-up: its own log starts after the prefix.
        steps = [json.loads(line)["step"] for line in
                 (workdir / "seed0" / method / "metrics.jsonl").read_text().splitlines()]
        assert min(steps) > prefix
    static = {m: np.load(workdir / "seed0" / f"curate_{m}" / "kept_indices.npy")
              for m in ("semdedup", "hkmeans@rho=0.25")}
    assert static["hkmeans@rho=0.25"].size == round(0.25 * c.data.num_samples)
    hkmeans = json.loads((workdir / "seed0" / "static_hkmeans@rho=0.25" / "config.json").read_text())
    assert hkmeans["pruning"]["rho"] == 0.25                # the method's parameter, applied to its run only
    served = raw["runs"]["static_hkmeans@rho=0.25/seed0"]["pruning"]["selection_size"]
    assert served == static["hkmeans@rho=0.25"].size
    assert raw["runs"]["dynamic/seed0"]["pruning"]["resamplings"] >= 2
    assert raw["runs"]["full/seed0"]["pruning"]["kept_fraction"] == 1.0


def test_results_table_and_figures(tiny):
    c, workdir, raw = tiny
    text = (workdir / "results.md").read_text()
    for method in list(c.compare.methods) + ["random init (reference)"]:
        assert f"| {method} |" in text
    assert (workdir / "accuracy.png").stat().st_size > 0 and (workdir / "class_mix.png").stat().st_size > 0
    curve = raw["runs"]["dynamic/seed0"]["curve"]
    assert [p["examples_seen"] for p in curve] == [128, 256]  # every 8 steps, the last one final
    # The table's columns are the headline metrics of the evaluators that ran.
    assert "| wv k-NN top-1 (k=20) |" in text and "| wv hs RMSE |" in text
    mix = raw["runs"]["full/seed0"]["class_mix"]
    assert len(mix) == 10 and sum(mix.values()) == pytest.approx(1.0, abs=1e-6)


def test_rerun_reads_finished_runs_back(tiny, monkeypatch):
    c, workdir, raw = tiny
    monkeypatch.setattr(compare, "pretrain", pytest.fail)   # nothing may train again
    again = compare.compare(c, workdir)
    assert again["runs"] == json.loads(json.dumps(raw["runs"]))


def test_other_evaluators_reevaluate_the_finished_runs_once(tiny, monkeypatch):
    c, workdir, raw = tiny
    c = c.copy_and_resolve_references()
    c.evals.wv.update(num_test_per_class=5, probes=("knn",))      # a larger test split, one probe
    monkeypatch.setattr(compare, "pretrain", pytest.fail)          # re-evaluated, never trained again
    again = compare.compare(c, workdir)
    for method in c.compare.methods:
        evaluation = json.loads((workdir / "seed0" / method / compare.EVALUATION_FILE).read_text())
        assert evaluation["evals"]["wv"]["num_test_per_class"] == 5
        assert again["runs"][f"{method}/seed0"]["final"] == evaluation["final"]
        assert "wv/linear/top1" not in evaluation["final"]
        assert "wv/linear/top1" in raw["runs"][f"{method}/seed0"]["final"]
    assert "wv/linear/top1" not in again["runs"]["at_init/seed0"]["final"]
    text = (workdir / "results.md").read_text()
    n = len(c.compare.methods)
    assert "linear" not in text and f"{n} of the {n} runs were trained under other evaluators" in text
    monkeypatch.setattr(compare, "restore_latest", pytest.fail)    # the second time, read back
    assert compare.compare(c, workdir)["runs"] == again["runs"]


def test_unknown_method_is_named_before_training(tmp_path):
    c = compare_config.get_config("smoke,seeds=1")
    c.compare.methods = ("full", "dedup")
    with pytest.raises(ValueError, match="config.compare.methods"):
        compare.compare(c, tmp_path)


def _image_folder(root, n_per_class, rng, bases):
    """Class folders of noisy copies of one blocky pattern per class (the same patterns in every split)."""
    from PIL import Image

    for c, base in enumerate(bases):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n_per_class):
            pixels = np.kron(base, np.ones((8, 8))) + rng.normal(0, 20, (32, 32))
            Image.fromarray(np.uint8(np.clip(pixels, 0, 255)), "L").save(root / f"class{c}" / f"{i}.png")


def test_compare_on_a_redundant_folder_pool_without_regression_targets(tmp_path):
    rng = np.random.default_rng(0)
    bases = rng.random((4, 4, 4)) * 255
    _image_folder(tmp_path / "pool", 24, rng, bases)
    for split in ("train", "val"):
        _image_folder(tmp_path / "eval" / split, 6, rng, bases)
    c = compare_config.get_config("smoke,seeds=2")
    c.compare.methods = ("full", "static_hkmeans")   # the dynamic method runs in the fixture above
    c.data.source, c.data.root = "folder", str(tmp_path / "pool")
    c.data.pool_transform.update(enabled=True, zipf=1.5, burst_fraction=0.5, copies=(2, 4))
    c.evals.wv.update(source="folder", root=str(tmp_path / "eval"), test_split="val", probes=("knn", "linear"),
                      targets=(), knn_ks=(1, 5))
    raw = compare.compare(c, tmp_path / "run")
    n = compare.pool_size(c)
    assert raw["pool_size"] == n != c.data.num_samples         # sized from the pool, not the default
    assert np.load(tmp_path / "run" / "seed0" / "curate_hkmeans" / "kept_indices.npy").size == round(0.5 * n)
    text = (tmp_path / "run" / "results.md").read_text()
    assert "wv k-NN top-1 (k=5)" in text and "RMSE" not in text
    assert "| static_hkmeans |" in text and "± " in text
    assert "Paired differences" in text and "| pool |" in text
    pool = raw["runs"]["full/seed0"]["pool_engagement"]
    assert pool["near_duplicate_share"] > 0.2 and raw["runs"]["full/seed0"]["engagement"] == pool
    # The evaluator sees the planted classes (4 patterns under noise): far above chance for every run.
    assert all(r["final"]["wv/knn/top1_k1"] > 0.6 for r in raw["runs"].values())


def test_objective_axis_trains_dino_and_dinov2_from_their_own_warmups(tmp_path):
    c = compare_config.get_config("smoke,seeds=1,objectives=dino+dinov2")
    c.compare.methods = ("full",)
    c.total_examples = 16 * 8
    c.evals.wv.every_examples = 16 * 8
    c.evals.wv.probes = ("knn",)
    raw = compare.compare(c, tmp_path)
    assert raw["objectives"] == ["dino", "dinov2"]
    for objective, ibot_weight in (("dino", 0.0), ("dinov2", 1.0)):
        config = json.loads((tmp_path / "seed0" / objective / "full" / "config.json").read_text())
        assert config["ibot"]["weight"] == ibot_weight and config["seed"] == 0
        warm = json.loads((tmp_path / "seed0" / objective / "warmup" / "config.json").read_text())
        assert warm["ibot"]["weight"] == ibot_weight and warm["pruning"]["policy"] == "none"
        assert raw["runs"][f"{objective}/full/seed0"]["final"]["wv/knn/top1_k20"] >= 0
    text = (tmp_path / "results.md").read_text()
    assert "| dino/full |" in text and "| dinov2/full |" in text and "| dinov2 − dino (full data) |" in text


def test_an_objective_patch_with_an_unknown_field_is_named(tmp_path):
    c = compare_config.get_config("smoke,seeds=1")
    c.compare.objectives = {"typo": {"ibot": {"wieght": 1.0}}}
    with pytest.raises(ValueError, match="config.compare.objectives.typo: ibot.wieght is not a config field"):
        compare.compare(c, tmp_path)


def test_data_axis_trains_each_duplicated_pool_from_its_own_warmup(tmp_path):
    c = compare_config.get_config("smoke,seeds=1,data=uniform+subset")
    c.compare.methods = ("full",)          # the pool-side methods (and their parameters) run in the tests above
    c.total_examples = 16 * 8
    c.evals.wv.update(probes=("knn",), every_examples=16 * 8)
    raw = compare.compare(c, tmp_path)
    assert raw["data"] == ["uniform", "subset"]                              # the arg's order, not sorted
    sizes = {name: v["pool_size"] for name, v in raw["variants"].items()}
    assert sizes == {"subset": 16, "uniform": 64}                            # base 25 % x 4 members
    for name in ("subset", "uniform"):
        config = json.loads((tmp_path / "seed0" / name / "full" / "config.json").read_text())
        assert config["data"]["duplication"]["scheme"] == name
        assert (tmp_path / "seed0" / name / "warmup" / "release" / "model.safetensors").is_file()
    # "filtered" = the uniform pool SemDeDup'd back to the base subset's size.
    filtered = np.load(tmp_path / "seed0" / "uniform" / "curate_semdedup@rho=0.25" / "kept_indices.npy")
    assert filtered.size == 16
    # Only the uniform variant trains the filtered subset; the others train full data.
    assert sorted(k for k in raw["runs"] if not k.startswith("at_init")) == sorted(
        f"{a}/seed0" for a in ["subset/full", "uniform/full", "uniform/static_semdedup@rho=0.25"])
    # The hidden truth of each pool: the duplicated one repeats its originals' duplicate groups.
    pools = {name: raw["runs"][f"{name}/full/seed0"]["pool_engagement"] for name in sizes}
    assert pools["uniform"]["near_duplicate_share"] >= 0.75 > pools["subset"]["near_duplicate_share"]
    text = (tmp_path / "results.md").read_text()
    assert "| subset − uniform (full data) |" in text and "| pool: subset |" in text
    assert "| uniform/static_semdedup@rho=0.25 − uniform/full |" in text


def test_a_method_parameter_is_applied_and_checked_before_training(tmp_path):
    c = compare_config.get_config("smoke,seeds=1")
    semdedup = compare._curate_config(compare._method_config(c, "static_semdedup@eps=0.05"),
                                      "static_semdedup@eps=0.05", 64, tmp_path)
    assert (semdedup.semdedup.eps, tuple(semdedup.semdedup.eps_list), semdedup.semdedup.target_fraction) == (
        0.05, (0.05,), 0.0)
    hkmeans = compare._curate_config(compare._method_config(c, "static_hkmeans@rho=0.1"), "static_hkmeans@rho=0.1",
                                     64, tmp_path)
    assert hkmeans.target_fraction == 0.1
    # A dynamic method takes the scalar levers of config.pruning, each cast to its field's type.
    dynamic = compare._method_config(c, "dynamic@features=copy_descriptors,eta=1,every_epochs=2,whiten=true")
    assert (dynamic.pruning.features, dynamic.pruning.eta, dynamic.pruning.every_epochs, dynamic.pruning.whiten) == (
        "copy_descriptors", 1.0, 2, True)
    assert isinstance(dynamic.pruning.every_epochs, int) and c.pruning.features == "cls"
    for bad, message in (("static_hkmeans@eps=0.1", "static_hkmeans takes rho=<value>"),
                         ("dynamic@warmup_examples=0", "dynamic takes rho=<value>, features=<value>"),
                         ("dynamic@every_epochs=1.5", "pruning.every_epochs must be of type int"),
                         ("dynamic@features=pixels", "pruning.features")):
        c.compare.methods = ("full", bad)
        with pytest.raises(ValueError, match=message):
            compare.compare(c, tmp_path)


def test_the_ucm_pool_recipe_validates_and_is_sized_from_its_real_pool(shared_data):
    c = compare_config.get_config(f"recipe=ucm_pool,seeds=1,data_root={shared_data}")
    compare._check(c)                                  # every method's config validates before training
    n = compare.pool_size(c)
    # Zipf 1.0 over 21 classes of 80 train images: 80 * H_21 originals, 45 % of them in bursts of 2-8.
    assert 800 < n < 1000 and c.data.pool_transform.enabled and c.model.in_channels == 3
    assert (c.evals.wv.source, c.evals.wv.test_split, tuple(c.evals.wv.targets)) == ("folder", "val", ())
