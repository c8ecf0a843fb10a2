"""The Experiment: abstract state equal to the real one, the AOT step and its report, and `config.init_from`."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import default
from oceansar import release
from oceansar.experiment import Experiment, program_report, run_spec


def _experiment(**overrides) -> Experiment:
    config = default.get_config("smoke")
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        setattr(config[parent] if parent else config, leaf, value)
    return Experiment.build(run_spec(config), num_samples=64)


def test_abstract_state_is_the_initial_state_without_materialising_it():
    exp = _experiment()
    state = exp.init_state()
    abstract, real = jax.tree.leaves(exp.abstract_state), jax.tree.leaves(state)
    assert len(abstract) == len(real)
    for a, r in zip(abstract, real):
        assert (a.shape, a.dtype) == (r.shape, r.dtype) and a.sharding == r.sharding


def test_compiled_step_runs_and_reports_its_program():
    exp = _experiment()
    compiled = exp.compile_train_step(np.uint8, log=False)
    report = program_report(compiled)
    assert report["flops"] > 0 and report["temp_size_in_bytes"] > 0
    b, s = exp.spec.batch_size, exp.spec.data.image_size
    from oceansar import sharding

    batch = sharding.shard_batch(exp.mesh, {"image": np.zeros((b, s, s, 1), np.uint8),
                                            "sample_id": np.arange(b), "weight": np.ones(b, np.float32)})
    state, metrics, per_sample = compiled(exp.init_state(), batch)
    assert int(state.step) == 1 and per_sample.shape == (b,) and np.isfinite(float(metrics["train/loss"]))


def test_init_from_fills_student_and_teacher_backbones(tmp_path):
    donor = _experiment(seed=7)
    released = release.export(tmp_path / "release", teacher_params=donor.init_state().teacher, spec=donor.spec)
    fresh = _experiment().init_state()
    exp = _experiment(init_from=str(released))
    state = exp.init_state()
    want = nnx.to_pure_dict(donor.init_state().teacher["backbone"])
    for params in (state.params, state.teacher):
        got = nnx.to_pure_dict(params["backbone"])
        jax.tree.map(np.testing.assert_array_equal, got, want)
        # The head is the run's own fresh head, not the donor's.
        jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(params["head"]),
                     nnx.to_pure_dict(fresh.params["head"]))
    # The random-init reference of a summary does not load it.
    untouched = nnx.to_pure_dict(exp.init_state(init_from=False).params["backbone"])
    jax.tree.map(np.testing.assert_array_equal, untouched, nnx.to_pure_dict(fresh.params["backbone"]))


def test_init_from_another_architecture_is_refused_naming_the_field(tmp_path):
    donor = _experiment(**{"model.variant": "mu/4"})
    released = release.export(tmp_path / "release", teacher_params=donor.init_state().teacher, spec=donor.spec)
    with pytest.raises(ValueError, match="config.init_from: .*patch_embed"):   # 4 px patches into an 8 px embedding
        _experiment(init_from=str(released)).init_state()
    with pytest.raises(FileNotFoundError, match="config.init_from: .*nowhere is neither a .safetensors file nor"):
        _experiment(init_from=str(tmp_path / "nowhere")).init_state()
