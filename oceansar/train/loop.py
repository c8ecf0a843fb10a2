"""The training loop: `run(config, workdir)` pretrains, evaluates, checkpoints and releases.

The loop is an explicit epoch loop. At each epoch boundary the pruning policy produces the epoch's
Selection and the Grain pipeline serves it; each step dispatches the jitted train step without
waiting for it (the host reads the next batch while the device computes), and metrics are fetched
only on log steps. Resume order: the workdir's own checkpoint, then `config.resume`, then scratch.
A non-finite loss stops the run with an error and the last good checkpoint stays untouched.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from oceansar import release, sharding
from oceansar.checkpoint import Checkpointer, abstract_like
from oceansar.data import pipeline, sources
from oceansar.data.selection import Selection
from oceansar.evals import features as features_lib
from oceansar.evals import probes
from oceansar.metrics import MetricWriter, plot_run, read_jsonl, truncate_after
from oceansar.pruning import policies
from oceansar.train import optimizer as optim_lib
from oceansar.train import state as state_lib
from oceansar.train import step as step_lib
from oceansar.validate import validate


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Preempted(Exception):
    """SIGTERM arrived; the loop saved and stops."""


def _num_classes(source) -> int:
    return len(source.class_names)


class Evaluator:
    """Frozen-teacher evaluation on the labelled splits of `config.eval`."""

    def __init__(self, config, graphdef, rest, mesh):
        self.config = config
        self.train_source, self.test_source = sources.make_eval_sources(config)
        self.num_classes = _num_classes(self.train_source)
        self.embed = step_lib.make_embed_fn(graphdef, rest, config, features=config.eval.features)
        self.mesh = mesh

    def __call__(self, teacher_params, *, progress: bool = False) -> dict[str, float]:
        def embed_fn(images):
            return self.embed(teacher_params, images)

        feats = [features_lib.extract_features(
            embed_fn, src, batch_size=self.config.eval.batch_size, mesh=self.mesh,
            progress=progress, desc=f"eval {name} features")
            for name, src in (("train", self.train_source), ("test", self.test_source))]
        return probes.evaluate_features(feats[0], feats[1], num_classes=self.num_classes,
                                        n_bootstrap=self.config.eval.n_bootstrap,
                                        seed=self.config.seed)


def selection_summary(source, selection: Selection) -> dict[str, float]:
    """Size, mean weight and, where the source knows its hidden labels (the simulator), the class
    shares of a selection: the picture of pruning rebalancing the tail."""
    out = {"selection_size": len(selection),
           "pruning/weight_mean": float(selection.weights.mean())}
    if hasattr(source, "labels") and hasattr(source, "class_names"):
        counts = np.bincount(source.labels(selection.indices), minlength=len(source.class_names))
        out.update({f"pruning/class_share/{name}": float(c) / len(selection)
                    for name, c in zip(source.class_names, counts)})
    return out


def _format_results(title: str, results: dict[str, float]) -> str:
    keys = [k for k in sorted(results) if not k.endswith("_std") and isinstance(results[k], float)]
    return title + "\n" + "\n".join(
        f"  {k:<28s} {results[k]:.4f}" + (f" ± {results[k + '_std']:.4f}"
                                          if k + "_std" in results else "") for k in keys)


def run(config, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Pretrains per `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns:
      A summary dict: steps, examples seen, wall time, final and at-init evaluation results.
    """
    workdir = pathlib.Path(workdir)
    devices = config.num_devices or jax.device_count()
    validate(config, num_devices=devices, process_count=jax.process_count())
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(config.num_devices or None)
    source = sources.make_pretrain_source(config.data, seed=config.seed)
    policy = policies.make_policy(config.pruning, num_samples=len(source), seed=config.seed,
                                  total_examples=config.total_examples)
    budget = step_lib.Budget.from_config(config)
    tx = optim_lib.make_optimizer(config.optim)
    graphdef, rest, state = state_lib.init_state(config, num_samples=len(source), tx=tx)
    state = sharding.replicate(mesh, state)
    train_step = step_lib.make_train_step(graphdef, rest, tx, config, budget)
    evaluator = Evaluator(config, graphdef, rest, mesh)
    local_batch = config.batch_size // jax.process_count()
    embed_cls = step_lib.make_embed_fn(graphdef, rest, config, features="cls")

    def signals(examples_seen: int, previous: Selection | None) -> dict[str, Any]:
        """What a pruning policy may read at an epoch boundary; each fetched only if used."""
        def embed(indices):
            return features_lib.extract_features(
                lambda images: embed_cls(state.teacher, images), source,
                batch_size=config.eval.batch_size, indices=indices, mesh=mesh,
                desc="pruning embed")["features"]
        return {"examples_seen": examples_seen, "previous": previous, "embed": embed,
                "loss_table": lambda: jax.device_get(state.loss_stats)}

    def epoch_iterator(selection: Selection, epoch: int):
        ds = pipeline.epoch_dataset(
            source, selection, seed=config.seed, epoch=epoch, batch_size=local_batch,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
            worker_count=config.data.worker_count)
        return iter(ds)

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    restore_from = ckpt if ckpt.latest_step() is not None else None
    if restore_from is None and config.resume:
        restore_from = Checkpointer(config.resume, max_to_keep=config.keep_checkpoints)
        if restore_from.latest_step() is None:
            raise FileNotFoundError(f"config.resume: no checkpoint under {config.resume}")
    if restore_from is not None:
        start = restore_from.latest_step()
        meta, pruning_arrays = restore_from.restore_meta(start)
        epoch, selection = meta["epoch"], Selection.from_arrays(pruning_arrays)
        data_iter = epoch_iterator(selection, epoch)
        state = restore_from.restore_state(start, abstract_state=abstract_like(state),
                                           data_iterator=data_iter)
        if restore_from is not ckpt:
            restore_from.close()
        if is_main:
            truncate_after(workdir / "metrics.jsonl", start)
        logging.warning("resumed from step %d (epoch %d) of %s", start, epoch, restore_from.directory)
    else:
        start, epoch = 0, 0
        selection = policy.select(epoch, **signals(0, None))
        data_iter = epoch_iterator(selection, epoch)

    writer = MetricWriter(workdir, enabled=is_main)
    selection_info = selection_summary(source, selection)
    preempted = {"flag": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True))

    def save(step: int) -> None:
        if not bool(jax.device_get(state.finite)):
            raise NonFiniteLossError(
                f"non-finite loss before step {step}; not saved (last good checkpoint: "
                f"{ckpt.latest_step()} in {ckpt.directory})")
        ckpt.save(step, state=state, data_iterator=data_iter, pruning=selection.to_arrays(),
                  meta={"epoch": epoch, "examples_seen": step * config.batch_size})

    eval_every = (config.eval.every_examples // config.batch_size) if config.eval.every_examples else 0
    step = int(jax.device_get(state.step))
    bar = tqdm(total=budget.total_steps, initial=step, disable=not (config.progress and is_main),
               desc="pretrain", unit="step", dynamic_ncols=True)
    # (step, metrics, epoch, selection summary) of the last log step, written one step later.
    pending: tuple[int, dict, int, dict] | None = None
    t_last, step_last = time.perf_counter(), step
    t_start = time.perf_counter()
    try:
        while step < budget.total_steps:
            try:
                batch = next(data_iter)
            except StopIteration:
                epoch += 1
                selection = policy.select(epoch, **signals(step * config.batch_size, selection))
                data_iter = epoch_iterator(selection, epoch)
                selection_info = selection_summary(source, selection)
                continue
            device_batch = sharding.shard_batch(
                mesh, {k: batch[k] for k in ("image", "sample_id", "weight")})
            state, metrics, _ = train_step(state, device_batch)
            step += 1
            bar.update(1)
            if pending is not None:
                # Metrics of the previous log step, fetched now that the next step is queued.
                log_step, log_metrics, log_epoch, log_selection = pending
                values = jax.device_get(log_metrics)
                if not np.isfinite(values["train/loss"]):
                    raise NonFiniteLossError(
                        f"loss is {values['train/loss']} at step {log_step}; stopping. The last good "
                        f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}")
                now = time.perf_counter()
                values["train/examples_per_sec"] = (step - 1 - step_last) * config.batch_size / (now - t_last)
                t_last, step_last = now, step - 1
                values.update(examples_seen=log_step * config.batch_size, epoch=log_epoch,
                              **log_selection)
                writer.write(log_step, values)
                bar.set_postfix(loss=f"{values['train/loss']:.3f}",
                                ex_s=f"{values['train/examples_per_sec']:.0f}")
                pending = None
            if step % config.log_every_steps == 0:
                pending = (step, metrics, epoch, selection_info)
            if step % config.checkpoint_every_steps == 0 or preempted["flag"]:
                save(step)
            if preempted["flag"]:
                raise _Preempted()
            if eval_every and step % eval_every == 0 and step < budget.total_steps:
                results = evaluator(state.teacher)
                writer.write(step, {f"eval/{k}": v for k, v in results.items()}
                             | {"examples_seen": step * config.batch_size})
        if pending is not None:
            values = jax.device_get(pending[1])
            if not np.isfinite(values["train/loss"]):
                raise NonFiniteLossError(f"loss is {values['train/loss']} at step {pending[0]}")
            values.update(examples_seen=pending[0] * config.batch_size, epoch=pending[2],
                          **pending[3])
            writer.write(pending[0], values)
        if ckpt.latest_step() != step:
            save(step)
        ckpt.wait()
    except _Preempted:
        ckpt.wait()
        logging.warning("SIGTERM: saved step %d in %s; rerun the same command to resume",
                        step, ckpt.directory)
        bar.close()
        raise SystemExit(143)
    finally:
        # Whatever stops the loop, the saves already started are completed: a crash keeps the
        # last good checkpoint whole.
        ckpt.wait()
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
    train_seconds = time.perf_counter() - t_start

    final = evaluator(state.teacher, progress=config.progress and is_main)
    writer.write(step, {f"eval/{k}": v for k, v in final.items()}
                 | {"examples_seen": step * config.batch_size})
    summary: dict[str, Any] = {"steps": step, "examples_seen": step * config.batch_size,
                               "train_seconds": round(train_seconds, 1), "final": final}
    if config.eval.at_init:
        _, _, init = state_lib.init_state(config, num_samples=1, tx=tx)
        summary["at_init"] = evaluator(sharding.replicate(mesh, init.teacher))
    if is_main:
        release.export(workdir / "release", teacher_params=state.teacher, config=config)
        plot_run(read_jsonl(workdir / "metrics.jsonl"), workdir / "metrics.png")
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(_format_results(f"teacher after {summary['examples_seen']} examples:", final))
        if "at_init" in summary:
            print(_format_results("same architecture at random init:", summary["at_init"]))
    writer.close()
    ckpt.close()
    return summary
