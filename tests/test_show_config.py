"""`--mode=show_config`: every leaf of the resolved config once, with the comment its recipe gives it.

The module is loaded from its file rather than through `oceansar.apps`, whose `__init__` imports every
mode and with them JAX: the mode itself must not need JAX, which one test checks in a fresh
interpreter, and loading it alone keeps these tests well under a second.
"""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from configs import compare, default, oceansar1

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE = ROOT / "oceansar" / "apps" / "show_config.py"
DEFAULT = ROOT / "configs" / "default.py"


def _load():
    spec = importlib.util.spec_from_file_location("_show_config_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


show_config = _load()


def _lines(text: str) -> dict[str, str]:
    """Line by dotted path (the header skipped)."""
    return {line.split(" = ", 1)[0]: line for line in text.splitlines()[1:]}


def _leaves(config, prefix: str = "") -> list[str]:
    """Every leaf path, through the public (sorted) API: independent of the module's own walk."""
    paths = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            paths += _leaves(value, path + ".")
        else:
            paths.append(path)
    return paths


def _assert_every_leaf_once(config, text: str) -> None:
    body = text.splitlines()[1:]
    leaves = _leaves(config)
    assert len(body) == len(leaves)
    for path in leaves:
        assert sum(line.startswith(f"{path} = ") for line in body) == 1, path


@pytest.fixture(scope="module")
def default_text() -> str:
    return show_config.describe(default.get_config(), DEFAULT)


def test_default_fields_carry_their_values_and_comments(default_text):
    header, lines = default_text.splitlines()[0], _lines(default_text)
    assert "configs/default.py" in header and "The embedded demo: DINO pretraining" in header
    assert lines["batch_size"].startswith("batch_size = 64 ")
    assert lines["batch_size"].endswith("# global; split over every device")
    assert lines["data.num_samples"].startswith("data.num_samples = 16384 ")
    assert lines["data.num_samples"].endswith("# simulated vignettes in the pretraining pool")
    assert lines["data.pool_transform.zipf"].startswith("data.pool_transform.zipf = 1.0 ")
    assert "# class shares 1 / rank^zipf, classes in a random order" in lines["data.pool_transform.zipf"]
    assert lines["evals.wv.targets"].startswith("evals.wv.targets = ('wind_speed', 'hs') ")
    assert lines["evals.wv.targets"].endswith("# record fields the regression probe predicts")
    assert lines["evals.wv.source"].startswith("evals.wv.source = 'synthetic_wv' ")
    assert lines["data.labels_csv"] == "data.labels_csv = ''"  # no comment, no trailing blanks
    assert lines["crops.ratio"].startswith("crops.ratio = (0.75, 1.3333333333333333)")
    # dino_config() of configs/common.py, imported by the recipe.
    assert lines["dino.student_temp"].endswith("# tau_s (DINO).")


def test_multi_line_comments_join_their_continuation_lines(default_text):
    lines = _lines(default_text)
    features = lines["pruning.features"]
    assert features.startswith("pruning.features = 'cls' ")
    # the continuation lines sit left of this field's own comment, in the block's comment column
    assert "# cluster the teacher's cls" in features and "model-free copy descriptors" in features
    assert features.endswith("(docs/engagement.md).")
    assert lines["pruning.subset_size"].endswith("bounds how far the head is flattened (docs/engagement.md)")
    # the next field's comment is not swallowed
    assert "PCA" not in features and "PCA-whiten" in lines["pruning.whiten"]


def test_order_and_comment_column(default_text):
    order = [line.split(" = ")[0] for line in default_text.splitlines()[1:]]
    # insertion order, not ConfigDict's sorted one: common's blocks first, then the recipe's
    expected = ["dino.student_temp", "optim.base_lr", "name", "seed", "data.source", "model.variant",
                "crops.global_size", "batch_size", "pruning.policy", "evals.wv.source", "init_from"]
    assert [order.index(p) for p in expected] == sorted(order.index(p) for p in expected)
    columns = {line.index("  # ") + 2 for line in default_text.splitlines()[1:] if "  # " in line}
    assert len(columns) == 1


def test_every_leaf_appears_exactly_once(default_text):
    _assert_every_leaf_once(default.get_config(), default_text)


def test_an_override_prints_the_new_value_with_the_recipe_comment():
    config = default.get_config()
    config.lock()  # as launch.py hands it over
    with config.unlocked():
        config.batch_size = 128
    config.data.pool_transform.zipf = 1.5
    lines = _lines(show_config.describe(config, DEFAULT))
    assert lines["batch_size"].startswith("batch_size = 128 ")
    assert lines["batch_size"].endswith("# global; split over every device")
    assert lines["data.pool_transform.zipf"].startswith("data.pool_transform.zipf = 1.5 ")


def test_a_smoke_override_keeps_the_first_comment():
    text = show_config.describe(default.get_config("smoke"), f"{DEFAULT}:smoke")
    lines = _lines(text)
    assert lines["data.num_samples"].startswith("data.num_samples = 512 ")
    assert lines["data.num_samples"].endswith("# simulated vignettes in the pretraining pool")
    assert lines["evals.wv.every_examples"].endswith("# also at the end")


def test_oceansar1_comments_come_from_itself_then_from_the_recipes_it_builds_on():
    config = oceansar1.get_config()
    text = show_config.describe(config, ROOT / "configs" / "oceansar1.py")
    _assert_every_leaf_once(config, text)
    lines = _lines(text)
    assert lines["data.num_samples"].endswith("# simulated pool (12 M real images in the paper)")
    assert lines["model.variant"].startswith("model.variant = 'S/16' ")
    assert "# ViT variant string" in lines["model.variant"]  # set without a comment: default's
    # set again without a comment: the definition's comment (common), not default's own override's
    assert lines["dino.teacher_momentum"].endswith("# m0; cosine to 1.0 over the run.")


def test_compare_mounts_the_curation_recipes_under_their_fields():
    config = compare.get_config()
    text = show_config.describe(config, ROOT / "configs" / "compare.py")
    _assert_every_leaf_once(config, text)
    lines = _lines(text)
    assert lines["compare.seeds"].startswith("compare.seeds = (0, 1) ")
    assert lines["compare.seeds"].endswith("# each seed draws its own pool, init and data order")
    assert "Static curation" not in lines["compare.seeds"]  # a leading comment of the next fields
    assert lines["compare.curate_semdedup.seed"].endswith("# spherical k-means seed (and the \"random\" ordering's)")
    assert lines["seed"] == "seed = 0"  # not the curation recipe's seed comment
    assert lines["compare.curate_hkmeans.data.num_samples"].endswith("simulated vignettes in the pretraining pool")
    assert lines["data.num_samples"].endswith("# simulated vignettes in the pretraining pool")


def test_unknown_constructs_do_not_raise(tmp_path):
    recipe = tmp_path / "odd.py"
    recipe.write_text(textwrap.dedent('''\
        import ml_collections
        from configs import missing

        def helper(x):
            return [i * x for i in range(3)]

        def get_config(arg=None):
            config = ml_collections.ConfigDict()
            config.a = 1
            config.b = 2                  # first
            config.c = {k: v for k, v in zip("xy", (1, 2))}   # a comprehension
            config["d"] = 4               # by subscript
            config.e, config.f = 5, 6
            config.update(g=7)            # by update
            config.h = dict(**{"i": 1}, j=(lambda: 2)())      # j it is
            config.k = missing.get_config() if arg else None  # conditional
            if arg == "smoke":
                config.a = 10             # smoke only
                config.b = 20             # smoke b
            else:
                while False:
                    config.x += 1
            try:
                config.z = helper(2)      # zed
            except Exception:
                pass
            return config
        '''))
    config = ml_collections.ConfigDict({"a": 1, "b": 2, "c": {"x": 1}, "d": 4, "e": 5, "f": 6, "g": 7,
                                        "h": {"i": 1, "j": 2}, "k": None, "z": (0, 2, 4),
                                        "extra": "not in the recipe"})
    lines = _lines(show_config.describe(config, recipe))
    assert lines["a"].endswith("# smoke only")  # the first setting had none
    assert lines["b"].endswith("# first")
    assert lines["c.x"] == "c.x = 1"  # no comment on the key's own line
    assert lines["d"].endswith("# by subscript")
    assert lines["g"].endswith("# by update")
    assert lines["h.j"].endswith("# j it is")
    assert lines["z"].startswith("z = (0, 2, 4) ") and lines["z"].endswith("# zed")
    assert lines["extra"] == "extra = 'not in the recipe'"

    broken = tmp_path / "broken.py"
    broken.write_text('"""Broken."""\ndef get_config(:\n    c.a = 1  # never parsed\n')
    text = show_config.describe(config, broken)
    assert len(text.splitlines()) == 1 + len(_leaves(config))
    assert not any("#" in line for line in text.splitlines()[1:])
    assert "not found" in show_config.describe(config, tmp_path / "nowhere.py").splitlines()[0]


def test_show_config_prints_and_returns(capsys):
    config = default.get_config()
    text = show_config.show_config(config, "/unused", recipe=DEFAULT)
    assert capsys.readouterr().out == text + "\n"
    assert text == show_config.describe(config, DEFAULT)


def test_the_module_does_not_import_jax():
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('m', {str(MODULE)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m; spec.loader.exec_module(m); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
