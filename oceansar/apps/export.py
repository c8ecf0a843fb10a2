"""`launch.py --mode=export`: write `<workdir>/release` from the latest checkpoint's teacher backbone."""
from __future__ import annotations

import pathlib

from oceansar import release
from oceansar.experiment import restore_latest, run_spec


def export(config, workdir: str | pathlib.Path) -> pathlib.Path:
    """Writes `<workdir>/release` (see `oceansar.release`) and returns its path."""
    spec = run_spec(config)
    exp, state, step = restore_latest(spec, workdir)
    out = release.export(pathlib.Path(workdir) / "release", teacher_params=state.teacher, spec=spec,
                         tokenizer=exp.tokenizer)
    print(f"released the teacher backbone of step {step} to {out}")
    return out
