"""What a pod does, on one machine: two JAX processes of four CPU devices each train what one process of eight does,
also when one of them is killed mid-run and both commands are rerun.

The processes join through `launch.py`'s coordinator flags (a localhost coordinator, CPU collectives over gloo),
each reads its block of every global batch, and the re-clustering of dynamic pruning sees the global pool.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import subprocess_env
from oceansar.apps.pretrain import pretrain
from oceansar.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dynamic pruning with a re-clustering inside the budget: one full epoch of 64 images, then balanced halves.
OVERRIDES = {"data.num_samples": 64, "pruning.rho": 0.5, "pruning.warmup_examples": 64, "pruning.every_epochs": 2,
             "pruning.n_clusters": (8, 2), "pruning.n_resamples": 1, "total_examples": 160, "eval_at_init": False,
             "evals.wv.every_examples": 0, "evals.wv.probes": ("knn",), "checkpoint_every_steps": 2}
ARGS = ["--config=configs/default.py:smoke", *[f"--config.{k}={v}".replace(" ", "") for k, v in OVERRIDES.items()]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, devices: int, extra=(), **env):
    return subprocess.Popen([sys.executable, "launch.py", *ARGS, f"--workdir={workdir}", *extra], cwd=ROOT,
                            env=dict(subprocess_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                                     **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _pod(workdir):
    port = _free_port()
    return [_launch(workdir, 4, [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                                 "--heartbeat_timeout_s=10"], JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
            for i in range(2)]


def test_two_processes_train_what_one_does_through_a_kill(tmp_path, smoke_config):
    # kill -9 of process 1 once the step-2 checkpoint is committed: process 0 stops, naming the dead process.
    pod, step_dir = _pod(tmp_path / "two"), tmp_path / "two" / "checkpoints" / "2"
    deadline = time.time() + 300
    while time.time() < deadline and not (step_dir / "_CHECKPOINT_METADATA").exists():
        assert all(p.poll() is None for p in pod), pod[0].stderr.read()[-3000:]
        time.sleep(0.05)
    pod[1].kill()
    pod[1].communicate()
    _, err = pod[0].communicate(timeout=120)
    assert pod[0].returncode != 0 and "another task died" in err and "unhealthy" in err, err[-3000:]
    saved = Checkpointer(tmp_path / "two" / "checkpoints").latest_step()
    assert saved is not None and 2 <= saved < 10 and not (tmp_path / "two" / "summary.json").exists()
    # The same two commands again: they resume from the last committed step and finish.
    pod = _pod(tmp_path / "two")
    outs = [p.communicate(timeout=400) for p in pod]
    for p, (_, err) in zip(pod, outs):
        assert p.returncode == 0, err[-3000:]
    assert f"resumed from step {saved}" in outs[0][1]
    config = smoke_config                      # one process of the tests' eight devices
    for key, value in OVERRIDES.items():
        block, _, name = key.rpartition(".")
        (config[block] if block else config)[name] = value
    pretrain(config, tmp_path / "one")

    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    losses = lambda records: [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]  # noqa: E731
    assert [s for s, _ in losses(one)] == [s for s, _ in losses(two)] and len(losses(one)) == 5
    np.testing.assert_allclose([x for _, x in losses(two)], [x for _, x in losses(one)], rtol=1e-5, atol=1e-5)
    # The same re-clustering and the same balanced selection: what each epoch served, class by class.
    summaries = [json.loads((tmp_path / d / "summary.json").read_text())["pruning"] for d in ("one", "two")]
    assert summaries[0] == summaries[1] and summaries[0]["resamplings"] >= 1
    served = lambda records: [{k: v for k, v in r.items() if k.startswith("pruning/")} for r in records  # noqa: E731
                              if "pruning/head_share" in r]
    assert served(one) == served(two)
    # Process 0 alone wrote the workdir: one metrics file, one release.
    assert (tmp_path / "two" / "release" / "model.safetensors").is_file()
