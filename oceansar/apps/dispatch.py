"""One launch: which config a workdir runs with, one writer per workdir, signals as exit codes.

`launch.py` parses flags and calls `run`. For the modes that work on a training run (pretrain,
evaluate, export) the workdir's stored config is the default: a launch that gives none continues or
reads the run as it was started, and one that gives a different run config is refused before anything
is built (`oceansar.workdir`). Every mode that writes in its workdir holds the workdir's lock while it
runs (process 0 of a pod takes it, the others wait for the outcome). SIGTERM and SIGINT are turned into
`Preempted` (`oceansar.train.preemption`) and from there into the shell's exit code 128 + signal
after the loop saved, with the message to rerun.
"""
from __future__ import annotations

import ast
import contextlib
import logging
import pathlib
import re
import sys
from typing import Any

import jax
import numpy as np

from oceansar import workdir as workdir_lib
from oceansar.apps import MODES, show_config
from oceansar.errors import WorkdirError
from oceansar.train import preemption
from oceansar.train.preemption import Preempted, Preemption

RUN_MODES = ("pretrain", "evaluate", "export")
WRITING_MODES = ("pretrain", "export", "embed", "curate", "compare", "finetune")


def recipes(directory: str | pathlib.Path = "configs") -> str:
    """One line per recipe in `directory`: its `--config=` value and its docstring's first line."""
    lines = []
    for path in sorted(pathlib.Path(directory).glob("*.py")):
        if path.name.startswith("_") or path.name == "common.py":
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except SyntaxError:
            doc = "(does not parse)"
        lines.append(f"  {str(path):<30s} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    return "\n".join(lines)


def unknown_override(error: Exception, argv: list[str]) -> str:
    """The one-line message for a `--config.<field>=` override that names no field of the recipe."""
    while error.args and isinstance(error.args[0], Exception):  # ml_collections wraps a KeyError
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    key = re.search(r"'([^'\\]+)'", text)
    key = key.group(1) if key else text
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    flag = next((a for a in given if key in a[len("--config."):].split(".")), f"--config...{key}")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"error: {flag}: the recipe has no field {key!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
            + " (--mode=show_config lists every field)")


def resolve(mode: str, config, workdir: pathlib.Path, *, config_given: bool,
            on_config_change: str) -> tuple[Any, pathlib.Path]:
    """The config and workdir a launch runs with (see the module docstring)."""
    if mode not in RUN_MODES:
        return config, workdir
    stored = workdir_lib.stored_config(workdir)
    if stored is not None and not config_given:
        logging.warning("using the config stored in %s", workdir / workdir_lib.CONFIG_FILE)
        config = stored
    if mode == "pretrain":
        return config, workdir_lib.place(workdir, config, on_config_change)
    if stored is None and not (workdir / "checkpoints").is_dir():
        raise WorkdirError(f"{workdir} holds no run (no {workdir_lib.CONFIG_FILE}, no checkpoints): "
                           f"train one there with --mode=pretrain first")
    if stored is not None and config_given:
        workdir_lib.claim(workdir, config, write=False)  # evaluators may differ, the run may not
    return config, workdir


@contextlib.contextmanager
def _lock(workdir: pathlib.Path):
    """The workdir's lock, taken by process 0; every process learns whether it was taken."""
    lock = workdir_lib.Lock(workdir)
    error: WorkdirError | None = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            error = WorkdirError(f"process 0 could not take the lock of {workdir}")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if jax.process_index() == 0:
            lock.release()


def run(mode: str, config, workdir: str | pathlib.Path, *, config_given: bool, recipe: str = "",
        on_config_change: str = "refuse") -> Any:
    """Runs `mode` on `config` in `workdir`; what the mode returns.

    Args:
      mode: a key of `oceansar.apps.MODES`, or "show_config".
      config: the recipe's ConfigDict after command-line overrides.
      workdir: the run directory.
      config_given: whether the command named a recipe or overrode a field; if not, a run's workdir
        supplies its stored config.
      recipe: the recipe file, for show_config's comments.
      on_config_change: refuse | new | override, when a run's workdir holds another config.

    Raises:
      SystemExit: 128 + signal number after SIGTERM or SIGINT (the run saved what it trained).
      UserError: a config, data or workdir problem, named.
    """
    if mode == "show_config":
        return show_config.show_config(config, workdir, recipe=recipe)
    with Preemption():
        try:
            config, workdir = resolve(mode, config, pathlib.Path(workdir), config_given=config_given,
                                      on_config_change=on_config_change)
            with _lock(workdir) if mode in WRITING_MODES else contextlib.nullcontext():
                kwargs = {"on_config_change": on_config_change} if mode == "pretrain" else {}
                return MODES[mode](config, workdir, **kwargs)
        except Preempted as e:
            print(f"stopped by {e}" if e.detail else f"stopped by {e} before training anything new; rerun the "
                  f"same command to start or resume", file=sys.stderr, flush=True)
            preemption.exit_with(e.exit_code)
