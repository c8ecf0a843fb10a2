"""Faults a run survives, each with its expected outcome: read this file to see what oceansar promises.

- A finished run relaunched does nothing and rewrites nothing.
- A relaunch with another run config is refused, naming the fields; without --config a workdir's own
  config is used (evaluate on a non-default run); --on_config_change=new/override say otherwise.
- One writer per workdir: a second launch is refused naming the owner; a dead owner's lock is taken over.
- SIGTERM to the whole process group, Grain workers included, saves at the next step, exits 143, and
  the rerun ends bit-identical to an uninterrupted run; a signal while compiling exits within seconds.
- The metric log is one run's: what a kill before the first checkpoint left is dropped on the rerun.
- Config errors are one line naming the field, without a traceback.

Bad data (corrupt, mixed bit depths, channel mismatches, missing roots) is in `test_faults_data.py`;
kill -9 mid-run and a NaN loss are in `test_train_loop.py`.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import jax
import numpy as np
import pytest
from absl import flags

import launch
from conftest import subprocess_env
from oceansar import workdir as workdir_lib
from oceansar.apps.pretrain import pretrain
from oceansar.checkpoint import Checkpointer
from oceansar.errors import WorkdirError
from oceansar.experiment import restore_latest, run_spec
from oceansar.train.preemption import Preempted, Preemption

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = ["--config=configs/default.py:smoke", "--config.eval_at_init=False", "--config.evals.wv.every_examples=0"]


def _parse(argv: list[str]) -> None:
    """launch.py's flag parsing in this process. ml_collections reads --config.<field> overrides from
    sys.argv and registers one flag per override, which must go before the next parse."""
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    with mock.patch.object(sys, "argv", argv):
        launch._parse_flags(argv)


def _launch(*argv):
    _parse(["launch.py", *argv])
    launch.main([])


def _env(compilation_cache: bool = True) -> dict[str, str]:
    env = subprocess_env()
    if not compilation_cache:  # compile for real, with every optimisation pass
        del env["JAX_COMPILATION_CACHE_DIR"]
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "False"
    return env


def _spawn(*argv, compilation_cache: bool = True) -> subprocess.Popen:
    """launch.py in its own process group, as a scheduler starts it."""
    return subprocess.Popen([sys.executable, "launch.py", *argv], cwd=ROOT, env=_env(compilation_cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode}: " + proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def _steps(workdir: pathlib.Path) -> list[int]:
    """The steps of the training records (the final evaluation is a record of its own at the last step)."""
    return [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").open()) if "train/loss" in r]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
    """A finished smoke run whose workdir first held what a kill before the first checkpoint leaves."""
    workdir = tmp_path_factory.mktemp("finished")
    (workdir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": -1.0}) + "\n"
                                                   for s in (2, 4, 6)))
    _launch(*SMOKE, f"--workdir={workdir}")
    return workdir


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_steps(finished):
    assert _steps(finished) == list(range(2, 13, 2))
    assert all(r.get("train/loss") != -1.0 for r in map(json.loads, (finished / "metrics.jsonl").open()))


def test_summary_records_the_launches_and_skipped_files(finished):
    summary = json.loads((finished / "summary.json").read_text())
    (segment,) = summary["segments"]
    assert segment["start_step"] == 0 and segment["end_step"] == 12
    assert summary["train_seconds"] == segment["train_seconds"] > 0
    assert summary["wall_seconds"] >= segment["train_seconds"]
    assert summary["data"]["skipped_files"] == 0


def test_a_finished_run_relaunched_does_nothing(finished, capsys):
    before = {p: p.read_bytes() for p in (finished / "metrics.jsonl", finished / "summary.json",
                                          finished / "release" / "model.safetensors")}
    _launch(*SMOKE, f"--workdir={finished}")
    assert "is a finished run" in capsys.readouterr().out
    assert all(p.read_bytes() == b for p, b in before.items())


def test_another_batch_size_is_refused_naming_it(finished):
    with pytest.raises(SystemExit) as exit_:
        _launch(*SMOKE, "--config.batch_size=32", f"--workdir={finished}")
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "batch_size: 16 -> 32" in message and "--on_config_change" in message
    assert json.loads((finished / "config.json").read_text())["batch_size"] == 16


def test_evaluate_without_config_reads_the_runs_own(finished, capsys):
    _launch("--mode=evaluate", f"--workdir={finished}")   # the default recipe is not the smoke run's
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["step"] == 12


def test_observation_fields_may_change_run_fields_may_not(tmp_path, smoke_config):
    workdir_lib.claim(tmp_path, smoke_config)
    changed = smoke_config.copy_and_resolve_references()
    changed.log_every_steps, changed.evals.wv.every_examples, changed.progress = 5, 0, True
    workdir_lib.claim(tmp_path, changed)                         # how the run is watched may change
    changed.pruning.rho = 0.5
    with pytest.raises(WorkdirError, match=r"pruning.rho: 0.25 -> 0.5"):
        workdir_lib.claim(tmp_path, changed)
    assert workdir_lib.place(tmp_path, changed, "new") == tmp_path.with_name(tmp_path.name + "-2")
    workdir_lib.claim(tmp_path, changed, "override")             # continue it with the new config
    assert json.loads((tmp_path / "config.json").read_text())["pruning"]["rho"] == 0.5
    assert json.loads((tmp_path / "config.1.json").read_text())["pruning"]["rho"] == 0.25


def test_a_second_writer_is_refused_naming_the_owner(tmp_path):
    with workdir_lib.Lock(tmp_path):
        with pytest.raises(WorkdirError, match=rf"in use by process {os.getpid()}"):
            workdir_lib.Lock(tmp_path).acquire()
    assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_a_dead_owners_lock_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "started": "earlier", "command": "launch.py"}))
    with workdir_lib.Lock(tmp_path):
        assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "no longer runs" in caplog.text


def test_another_hosts_lock_is_refused_naming_the_host(tmp_path):
    (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(
        {"host": "node-17", "pid": 1, "started": "earlier", "command": "launch.py"}))
    with pytest.raises(WorkdirError, match="on host node-17"):
        workdir_lib.Lock(tmp_path).acquire()


def test_two_concurrent_launches_one_refuses_the_other_finishes(tmp_path):
    workdir = tmp_path / "run"
    first = _spawn(*SMOKE, f"--workdir={workdir}")
    _wait_for(workdir / workdir_lib.LOCK_FILE, first)
    with pytest.raises(SystemExit) as exit_:
        _launch(*SMOKE, f"--workdir={workdir}")
    assert f"in use by process {first.pid}" in str(exit_.value.code)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-3000:]
    steps = _steps(workdir)
    assert steps == sorted(set(steps)) and (workdir / "summary.json").exists()
    assert not (workdir / workdir_lib.LOCK_FILE).exists()


def _sigterm_config(smoke_config):
    c = smoke_config
    c.data.num_samples = 256         # 12 steps per epoch: the signal lands inside the first epoch
    c.data.worker_count = 2          # Grain workers in the process group
    c.pruning.policy, c.pruning.rho = "random", 0.75
    c.total_examples = 16 * 24
    c.evals.wv.every_examples = 0
    c.evals.wv.probes = ("knn",)
    c.eval_at_init = False
    return c


SIGTERM_ARGS = ["--config=configs/default.py:smoke", "--config.data.num_samples=256", "--config.data.worker_count=2",
                "--config.pruning.policy=random", "--config.pruning.rho=0.75", "--config.total_examples=384",
                "--config.evals.wv.every_examples=0", "--config.evals.wv.probes=('knn',)", "--config.eval_at_init=False"]


def test_sigterm_to_the_process_group_saves_and_resumes_bit_identically(tmp_path, smoke_config):
    config = _sigterm_config(smoke_config)
    pretrain(config, tmp_path / "straight")

    stopped = tmp_path / "stopped"
    proc = _spawn(*SIGTERM_ARGS, f"--workdir={stopped}")
    _wait_for(stopped / "checkpoints" / "4", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-3000:]
    assert time.time() - signalled < 20
    saved = Checkpointer(stopped / "checkpoints").latest_step()
    assert f"step {saved} is saved" in err.decode() and "rerun the same command" in err.decode()
    assert 4 <= saved < 24 and not (stopped / workdir_lib.LOCK_FILE).exists()

    pretrain(config, stopped)  # the rerun
    (_, a, a_step), (_, b, b_step) = (restore_latest(run_spec(config), d) for d in (tmp_path / "straight", stopped))
    assert a_step == b_step == 24
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
        np.testing.assert_array_equal(x, y)
    losses = lambda d: [r["train/loss"] for r in map(json.loads, (d / "metrics.jsonl").open()) if "train/loss" in r]
    assert losses(tmp_path / "straight") == losses(stopped)
    summary = json.loads((stopped / "summary.json").read_text())
    assert [(s["start_step"], s["end_step"]) for s in summary["segments"]] == [(0, saved), (saved, 24)]


def test_a_signal_while_compiling_exits_within_seconds(tmp_path):
    workdir = tmp_path / "run"
    # A larger ViT, optimised and not cached: compiling its programs takes tens of seconds on a CPU.
    proc = _spawn("--config=configs/default.py:smoke", "--config.model.variant=B/8", f"--workdir={workdir}",
                  compilation_cache=False)
    _wait_for(workdir / "config.json", proc)
    time.sleep(5)
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-3000:]
    assert time.time() - signalled < 10
    assert "rerun the same command" in err.decode()
    assert Checkpointer(workdir / "checkpoints").latest_step() is None


def test_preemption_defers_inside_steps_and_raises_outside():
    with Preemption() as guard:
        with guard.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.requested                      # noted, the step goes on
        with pytest.raises(Preempted) as stopped:
            guard.check()
        assert stopped.value.exit_code == 143
    with Preemption():
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


@pytest.mark.parametrize("override, field", [
    ("--config.data.source=folder", "config.data.root"),
    ("--config.evals.wv.source=folder", "config.evals.wv.root"),
    ("--config.pruning.rho=2", "config.pruning.rho"),
    ("--config.crops.global_size=25", "config.crops.global_size"),
])
def test_config_errors_name_the_field(tmp_path, override, field):
    with pytest.raises(SystemExit) as exit_:
        _launch("--config=configs/default.py:smoke", override, f"--workdir={tmp_path}")
    assert str(exit_.value.code).startswith(f"error: {field}: ")
    assert not (tmp_path / "config.json").exists()


def test_an_unknown_field_is_one_line_with_the_closest_name():
    with pytest.raises(SystemExit) as exit_:
        _parse(["launch.py", "--config=configs/default.py:smoke", "--config.pruning.rhoo=1"])
    assert str(exit_.value.code) == ("error: --config.pruning.rhoo: the recipe has no field 'rhoo'; did you mean "
                                     "'rho'? (--mode=show_config lists every field)")


def test_the_command_line_prints_config_errors_without_a_traceback():
    proc = subprocess.run([sys.executable, "launch.py", "--config.pruning.rho=2", "--workdir=/nonexistent/x"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config.pruning.rho: must be in (0, 1]")
    assert "Traceback" not in proc.stderr


def test_help_lists_the_recipes_and_show_config():
    text = flags.FLAGS["config"].help
    assert "configs/oceansar1.py" in text and "configs/compare.py" in text and "--mode=show_config" in text
