"""`launch.py --mode=evaluate`: the named evaluators of a config on the latest checkpoint's teacher.

The train state is restored straight into the Experiment's abstract state (nothing else is built or
materialised), every evaluator of `config.evals` runs, and the results are printed as JSON.
"""
from __future__ import annotations

import json
import pathlib

from oceansar.experiment import restore_latest, run_spec


def evaluate(config, workdir: str | pathlib.Path) -> dict[str, float]:
    """Evaluates the latest checkpoint of `workdir` and prints the results."""
    spec = run_spec(config)
    exp, state, step = restore_latest(spec, workdir)
    results = exp.evaluate(state.teacher, progress=spec.progress)
    print(json.dumps({"step": step, **results}, indent=2))
    return results
