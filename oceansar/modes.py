"""What `launch.py --mode=...` runs: pretrain, evaluate, export, embed, curate or compare, each a
function of (config, workdir)."""
from __future__ import annotations

import json
import pathlib

from oceansar import release, sharding
from oceansar.checkpoint import Checkpointer, abstract_like
from oceansar.compare import compare
from oceansar.curate import curate
from oceansar.data import sources
from oceansar.embed import embed
from oceansar.train import loop
from oceansar.train import optimizer as optim_lib
from oceansar.train import state as state_lib


def _latest_state(config, workdir: pathlib.Path):
    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: run --mode=pretrain first")
    num_samples = len(sources.make_pretrain_source(config.data, seed=config.seed))
    tx = optim_lib.make_optimizer(config.optim)
    graphdef, rest, state = state_lib.init_state(config, num_samples=num_samples, tx=tx)
    mesh = sharding.make_mesh(config.num_devices or None)
    state = ckpt.restore_state(step, abstract_state=abstract_like(sharding.replicate(mesh, state)))
    ckpt.close()
    return graphdef, rest, state, mesh, step


def pretrain(config, workdir) -> dict:
    return loop.run(config, workdir)


def evaluate(config, workdir) -> dict:
    """Evaluates the latest checkpoint's teacher on `config.eval` and prints the results."""
    workdir = pathlib.Path(workdir)
    graphdef, rest, state, mesh, step = _latest_state(config, workdir)
    results = loop.Evaluator(config, graphdef, rest, mesh)(state.teacher, progress=config.progress)
    print(json.dumps({"step": step, **results}, indent=2))
    return results


def export(config, workdir) -> pathlib.Path:
    """Writes `<workdir>/release` from the latest checkpoint's teacher."""
    workdir = pathlib.Path(workdir)
    _, _, state, _, step = _latest_state(config, workdir)
    out = release.export(workdir / "release", teacher_params=state.teacher, config=config)
    print(f"released the teacher backbone of step {step} to {out}")
    return out


MODES = {"pretrain": pretrain, "evaluate": evaluate, "export": export, "embed": embed, "curate": curate,
         "compare": compare}
