r"""oceansar command line: pretrain, evaluate, export, embed, curate or compare from an ml_collections recipe.

    python launch.py                                        # configs/default.py, runs/default
    python launch.py --config=configs/oceansar1.py:variant=S/8 --workdir=runs/s8
    python launch.py --config=configs/default.py --config.batch_size=128
    python launch.py --mode=evaluate --workdir=runs/default   # evaluate the latest checkpoint
    python launch.py --mode=export --workdir=runs/default     # write runs/default/release
    python launch.py --mode=embed --config=configs/embed.py:release=runs/default/release
    python launch.py --mode=curate --config=configs/curate_hkmeans.py:embeddings=runs/embed
    python launch.py --mode=compare --config=configs/compare.py --workdir=runs/compare

Rerunning a command resumes from the workdir's latest checkpoint. Launched as several processes
(SLURM, a TPU pod, or --coordinator_address/--num_processes/--process_id), it first joins the
JAX distributed runtime. No logic lives here.
"""
from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Recipe file, optionally with ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<recipe name>).")
_MODE = flags.DEFINE_enum("mode", "pretrain", ["pretrain", "evaluate", "export", "embed", "curate", "compare"],
                          "What to do.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank.")


def _multi_process() -> bool:
    if _COORDINATOR.value:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # Orbax and Grain log every save and read at INFO; the loop reports through tqdm.
        logging.set_verbosity(logging.WARNING)
    import jax

    if _multi_process():
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    from oceansar import apps

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", config.name)
    logging.info("mode=%s workdir=%s devices=%d", _MODE.value, workdir, jax.device_count())
    apps.MODES[_MODE.value](config, workdir)


if __name__ == "__main__":
    app.run(main)
