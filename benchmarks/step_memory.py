r"""Benchmark: what the DINO train step holds per device, by ViT variant, remat policy and FSDP. Prints JSON.

Nothing executes: every number comes from tracing and compiling on abstract inputs, so the sizes of an
accelerator run (OceanSAR-1's 2 x 224 + 8 x 96 crops, 64 images per device, bf16 compute) can be read
on a CPU. Two measures per case:

- `residuals`: the bytes of every array the student's forward over the multi-crop saves for its
  backward pass (the outputs of `jax.vjp`'s residual function, read off its jaxpr; the parameters and
  crops themselves excluded): per sample, per step (the compute-dtype copies of the weights, whatever
  the batch; the two are read off forwards of one and two images) and at the per-device batch. This is what `model.remat`
  changes (`none` keeps everything, `dots_saveable` the matmul outputs, `full` each block's input) and
  it does not depend on the backend. It counts arrays before XLA's fusion, which may recompute some
  elementwise ones, so it bounds what a compiled program stores from above.
- `compiled`: XLA's memory analysis of the whole compiled train step per device
  (`oceansar.experiment.program_report`: arguments, outputs, aliased and temporary bytes), the step
  as `train/loop.py` compiles it. Arguments show what FSDP (`mesh.fsdp`) splits: parameters, teacher
  and optimizer state. On XLA:CPU the temporaries do not shrink with remat although the recomputation
  is there (measured, S/16 at 64 images per device: 22.6 GiB without remat, 22.9 GiB with `full`; XLA's
  FLOPs per sample 116 -> 139 G), so read remat's effect off `residuals`.

    JAX_NUM_CPU_DEVICES=8 python -m benchmarks.step_memory                  # S/16 and B/8, 64 per device
    python -m benchmarks.step_memory --variants=S/16 --batch_per_device=8 --remat=none,full --fsdp=1
"""
from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

# Run as a script, `from configs import ...` needs the repository root on the path.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.extend import core as jex_core  # noqa: E402

from configs import oceansar1  # noqa: E402
from oceansar.experiment import Experiment, program_report, run_spec  # noqa: E402
from oceansar.spec import RunSpec  # noqa: E402
from oceansar.train.state import build_model  # noqa: E402


def residual_bytes(fn: Callable, params: Any, *inputs: Any) -> int:
    """Bytes of the arrays the backward pass of `fn(params, *inputs)` with respect to `params` keeps, the
    arguments themselves excluded.

    The arguments may be abstract (`jax.ShapeDtypeStruct`): only the jaxpr of the forward and its residuals is
    built.
    """
    leaves, tree = jax.tree.flatten((params, inputs))

    def residuals(*flat):
        params, inputs = jax.tree.unflatten(tree, flat)
        return jax.vjp(lambda p: fn(p, *inputs), params)[1]  # a pytree whose leaves are the residuals

    jaxpr = jax.make_jaxpr(residuals)(*leaves).jaxpr
    arguments = {id(v) for v in jaxpr.invars}
    kept = {id(v): v for v in jaxpr.outvars if isinstance(v, jex_core.Var) and id(v) not in arguments}
    return sum(v.aval.size * v.aval.dtype.itemsize for v in kept.values())


def student_residual_bytes(spec: RunSpec, images: int) -> int:
    """What the student's forward over `images` images' multi-crop keeps for its backward (`residual_bytes`):
    its logits on the global and the local crops, in the run's compute dtype and remat policy."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: build_model(spec)), nnx.Param, ...)
    c, channels = spec.crops, spec.model.in_channels
    global_crops = jax.ShapeDtypeStruct((c.n_global, images, c.global_size, c.global_size, channels), jnp.float32)
    local_crops = jax.ShapeDtypeStruct((c.n_local, images, c.local_size, c.local_size, channels), jnp.float32)

    def loss(params, xg, xl):
        model = nnx.merge(graphdef, params, rest)
        return model(xg)["logits"].sum() + model(xl)["logits"].sum()

    return residual_bytes(loss, params, global_crops, local_crops)


def recipe(variant: str, *, remat: str, fsdp: int, dtype: str, batch_size: int):
    """OceanSAR-1's recipe for `variant` with DINO's objective (iBOT and KoLeo off) and the given memory knobs."""
    config = oceansar1.get_config(f"variant={variant}")
    config.model.update(remat=remat, dtype=dtype)
    config.ibot.weight, config.dino.koleo_weight = 0.0, 0.0
    config.mesh.fsdp = fsdp
    config.batch_size = batch_size
    config.total_examples = max(config.total_examples, batch_size)
    config.pruning.embed_batch_size = batch_size
    for e in config.evals.values():
        e.batch_size = batch_size
    return config


def _gib(n: float) -> float:
    return round(n / 2**30, 3)


def measure(variant: str, *, remat: str, fsdp: int, dtype: str, batch_per_device: int,
            residuals: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Any]:
    """One case: the compiled step's memory analysis per device and the student's residuals (cached per
    variant and remat policy in `residuals`, since they depend on nothing else)."""
    devices = jax.device_count()
    spec = run_spec(recipe(variant, remat=remat, fsdp=fsdp, dtype=dtype, batch_size=batch_per_device * devices))
    if (variant, remat) not in residuals:
        one, two = student_residual_bytes(spec, 1), student_residual_bytes(spec, 2)
        residuals[variant, remat] = two - one, 2 * one - two
    per_sample, per_step = residuals[variant, remat]
    t = time.perf_counter()
    exp = Experiment.build(spec, num_samples=spec.data.num_samples)
    report = program_report(exp.compile_train_step(np.uint8, log=False))
    compile_s = time.perf_counter() - t
    compiled = {k.removesuffix("_in_bytes"): v for k, v in report.items() if k.endswith("_in_bytes")}
    # As the loop's compile log counts it: the donated state's outputs reuse its arguments' buffers.
    held = compiled.get("argument_size", 0) + compiled.get("temp_size", 0)
    return {"variant": variant, "remat": remat, "fsdp": fsdp,
            "residuals": {"bytes_per_sample": per_sample, "bytes_per_step": per_step,
                          "gib_at_batch": _gib(per_step + per_sample * batch_per_device)},
            "compiled_per_device": compiled | {"arguments_and_temporaries_gib": _gib(held)},
            "compile_s": round(compile_s, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="S/16,B/8", help="ViT variants, comma-separated")
    parser.add_argument("--batch_per_device", type=int, default=64)
    parser.add_argument("--remat", default="none,dots_saveable,full", help="model.remat policies")
    parser.add_argument("--fsdp", default="1,8", help="mesh.fsdp sizes (each must divide the device count)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    variants, remats = args.variants.split(","), args.remat.split(",")
    fsdps = [int(f) for f in args.fsdp.split(",")]
    residuals: dict[tuple[str, str], tuple[int, int]] = {}
    cases = []
    for variant, remat, fsdp in itertools.product(variants, remats, fsdps):
        cases.append(measure(variant, remat=remat, fsdp=fsdp, dtype=args.dtype,
                             batch_per_device=args.batch_per_device, residuals=residuals))
        print(json.dumps(cases[-1]), file=sys.stderr, flush=True)  # progress: a B/8 compile takes minutes on a CPU
    device = jax.devices()[0]
    print(json.dumps({
        "benchmark": "step_memory",
        "device": {"platform": device.platform, "device_kind": device.device_kind, "count": jax.device_count(),
                   "jax": jax.__version__},
        "recipe": "configs/oceansar1.py, DINO objective (iBOT and KoLeo off)",
        "dtype": args.dtype, "batch_per_device": args.batch_per_device,
        "crops": "2 x 224 + 8 x 96",
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
