r"""oceansar command line: pretrain, evaluate, export, embed, curate, compare or finetune from an ml_collections recipe.

    python launch.py                                        # configs/default.py, runs/default
    python launch.py --config=configs/oceansar1.py:variant=S/8 --workdir=runs/s8
    python launch.py --config=configs/default.py --config.batch_size=128 --workdir=runs/b128
    python launch.py --mode=show_config --config=configs/oceansar1.py   # every field, its value and comment
    python launch.py --mode=evaluate --workdir=runs/default   # evaluate the latest checkpoint
    python launch.py --mode=export --workdir=runs/default     # write runs/default/release
    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release
    python launch.py --mode=curate --config=configs/curate_hkmeans.py:embeddings=runs/embed
    python launch.py --mode=compare --config=configs/compare.py --workdir=runs/compare
    python launch.py --mode=finetune --config=configs/finetune.py   # runs/default/release + a head, runs/finetune

A workdir is one run. Rerunning a command resumes from the workdir's latest checkpoint; without
--config, pretrain, evaluate and export use the config the run was started with; a different run
config is refused (see --on_config_change), a finished run is not trained again, and one process
writes a workdir at a time. SIGTERM or SIGINT saves at the next step and exits with 128 + signal.
Config, data and workdir errors print one line naming the field or file (--verbosity=1: traceback).
Launched as several processes (SLURM, a TPU pod, or --coordinator_address/--num_processes/
--process_id), it first joins the JAX distributed runtime; when one process dies (kill -9, a lost host) the
others stop within --heartbeat_timeout_s, naming it, and rerunning every process's command resumes from the last
checkpoint. No logic lives here.
"""
from __future__ import annotations

from oceansar.train import preemption

if __name__ == "__main__":  # before any thread or process starts: see oceansar.train.preemption
    preemption.block_signals()

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from oceansar.apps import dispatch  # noqa: E402
from oceansar.errors import UserError  # noqa: E402

_MODES = ["pretrain", "evaluate", "export", "embed", "curate", "compare", "finetune", "show_config"]
try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", "configs/default.py",
        "Recipe file, optionally with ':arg'; override a field with --config.<field>=value. Recipes:\n"
        + dispatch.recipes() + "\nSee a recipe's fields, values and comments with --mode=show_config.",
        lock_config=True)
except (AttributeError, KeyError) as error:  # an override of a field the default recipe lacks
    sys.exit(dispatch.unknown_override(error, sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<recipe name>).")
_MODE = flags.DEFINE_enum("mode", "pretrain", _MODES, "What to do.")
_ON_CONFIG_CHANGE = flags.DEFINE_enum(
    "on_config_change", "refuse", ["refuse", "new", "override"],
    "When the workdir holds a run with another config: refuse, start a new run in <workdir>-<n>, or "
    "continue that run with this config (the old one kept as config.<n>.json).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "Several processes: seconds without a heartbeat after which a process is declared "
    "dead and the others stop (JAX's default; rerun every process's command to resume from the last checkpoint).")


def _multi_process() -> bool:
    if _COORDINATOR.value:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:  # an override of a field the chosen recipe lacks
        sys.exit(dispatch.unknown_override(error, argv))


def main(argv):
    del argv
    verbose = flags.FLAGS["verbosity"].present
    if not verbose:
        # Orbax and Grain log every save and read at INFO; the loop reports through tqdm.
        logging.set_verbosity(logging.WARNING)
    import jax

    if _multi_process():
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                                   heartbeat_timeout_seconds=_HEARTBEAT.value)
    config_given = any(flags.FLAGS[name].present for name in flags.FLAGS if name == "config"
                       or name.startswith("config."))
    try:
        config = _CONFIG.value
        workdir = _WORKDIR.value or os.path.join("runs", config.name)
        logging.info("mode=%s workdir=%s devices=%d", _MODE.value, workdir, jax.device_count())
        dispatch.run(_MODE.value, config, workdir, config_given=config_given,
                     recipe=config_flags.get_config_filename(flags.FLAGS["config"]),
                     on_config_change=_ON_CONFIG_CHANGE.value)
    except UserError as error:
        if verbose:
            raise
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
