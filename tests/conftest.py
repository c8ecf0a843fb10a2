"""Test setup: eight fake CPU devices so every sharding path runs, and absl flags parsed.

This module must run before the first JAX operation: the CPU device count is fixed when
the backend starts.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

# Grain reads an absl flag in worker processes; outside absl.app.run the flags are unparsed.
flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real datasets beside the checkout (`../shared/data`); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (only present on development machines)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Share compiled programs between the runs of one session (resume tests rebuild the same step)."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield


# Modules that train and evaluate tiny models end to end: they only need their programs to run, and
# XLA's optimisation passes cost them more compile time than they save in execution.
END_TO_END = ("test_compare", "test_curate_cli", "test_dinov2", "test_experiment", "test_faults", "test_finetune",
              "test_multiprocess", "test_policies", "test_resnet", "test_train_loop", "test_wfa")


@pytest.fixture(scope="module", autouse=True)
def _unoptimised_end_to_end(request):
    if request.module.__name__.rpartition(".")[2] not in END_TO_END:
        yield
        return
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def subprocess_env() -> dict[str, str]:
    """The environment of a `launch.py` subprocess: the tests' devices, compiler settings and cache."""
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
                JAX_DISABLE_MOST_OPTIMIZATIONS=str(jax.config.read("jax_disable_most_optimizations")),
                JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir))


def launch_and_kill(argv: list[str], workdir: pathlib.Path, *, at_step: int, timeout: float = 300) -> None:
    """Runs `launch.py argv` in a subprocess and SIGKILLs it once the checkpoint of `at_step` is committed."""
    import signal
    import subprocess
    import sys
    import time

    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "launch.py", *argv], cwd=root, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    step_dir = workdir / "checkpoints" / str(at_step)
    while time.time() < deadline and proc.poll() is None:
        if (step_dir / "commit_success.txt").exists() or (step_dir / "_CHECKPOINT_METADATA").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def smoke_config():
    """The default recipe's smoke variant: the fixture of every end-to-end test."""
    from configs import default

    return default.get_config("smoke")
