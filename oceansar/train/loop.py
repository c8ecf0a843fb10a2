"""The epoch loop: `run(experiment, source, workdir, writer)` trains a run to its budget or a stop step.

Each epoch starts at a boundary where the pruning policy plans what it needs (`Pruner.plan`), the loop
computes exactly that (the current teacher's embeddings of the planned indices, the host copy of the
loss table) and the policy decides the epoch's Selection (`Pruner.decide`); the Grain pipeline then
serves it. Each step dispatches the compiled train step without waiting for it (the host reads the
next batch while the device computes) and fetches the metrics of the previous log step only once the
next step is queued. An epoch ends when its known number of batches has been served, and its finished
iterator is closed off the training thread (joining Grain's workers takes most of a second). Resume
order: the workdir's own checkpoint, then `config.resume`, then a fresh state (`config.init_from`
fills its backbone). A non-finite loss stops the run and the last good checkpoint stays untouched;
SIGTERM saves at the next step boundary and exits. Final evaluation, release and summary belong to
the application that called the loop (`oceansar.apps.pretrain`).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from curation import copies
from oceansar import sharding
from oceansar.checkpoint import Checkpointer
from oceansar.data import pipeline
from oceansar.evals import features as features_lib
from oceansar.experiment import Experiment
from oceansar.metrics import MetricWriter, truncate_after
from oceansar.pruning.policies import Pruner
from oceansar.pruning.report import resampling_scalars, selection_summary, write_reports
from oceansar.train.run_state import RunState


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Preempted(Exception):
    """SIGTERM arrived; the loop saved and stops."""


@dataclasses.dataclass
class Trained:
    """Where `run` left a run: its state, its run state, its step and the seconds this call trained."""

    state: Any
    run: RunState
    step: int
    train_seconds: float


class _Feed:
    """The Grain pipeline over each epoch's served Selection, this process's slice of it."""

    def __init__(self, source, exp: Experiment):
        self.source, self.spec = source, exp.spec
        self.local_batch = exp.spec.batch_size // jax.process_count()

    def open(self, run: RunState):
        return iter(pipeline.epoch_dataset(
            self.source, run.served, seed=self.spec.seed, epoch=run.epoch, batch_size=self.local_batch,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
            worker_count=self.spec.data.worker_count))

    def steps(self, run: RunState) -> int:
        return pipeline.steps_per_epoch(len(run.served), self.local_batch, jax.process_count())

    @staticmethod
    def retire(iterator) -> None:
        """Closes a finished epoch's iterator in the background, overlapping the next epoch."""
        if hasattr(iterator, "close"):
            threading.Thread(target=iterator.close, name="retire-epoch-iterator", daemon=True).start()


class _MetricLog:
    """The metrics of a log step, written one step later so their fetch overlaps the next step."""

    def __init__(self, writer: MetricWriter, bar, *, batch_size: int, ckpt: Checkpointer, step: int):
        self.writer, self.bar, self.batch_size, self.ckpt = writer, bar, batch_size, ckpt
        self.pending: tuple[int, dict, int, dict] | None = None
        self.t_last, self.step_last = time.perf_counter(), step

    def hold(self, step: int, metrics: dict, epoch: int, info: dict) -> None:
        self.pending = (step, metrics, epoch, info)

    def flush(self, step: int | None = None) -> None:
        """Writes the held metrics; `step` (the step just dispatched) also times examples/s."""
        if self.pending is None:
            return
        log_step, metrics, epoch, info = self.pending
        self.pending = None
        values = jax.device_get(metrics)
        if not np.isfinite(values["train/loss"]):
            raise NonFiniteLossError(
                f"loss is {values['train/loss']} at step {log_step}; stopping. The last good checkpoint "
                f"(step {self.ckpt.latest_step()}) is kept in {self.ckpt.directory}")
        if step is not None:
            now = time.perf_counter()
            values["train/examples_per_sec"] = (step - 1 - self.step_last) * self.batch_size / (now - self.t_last)
            self.t_last, self.step_last = now, step - 1
            self.bar.set_postfix(loss=f"{values['train/loss']:.3f}",
                                 ex_s=f"{values['train/examples_per_sec']:.0f}")
        values.update(examples_seen=log_step * self.batch_size, epoch=epoch, **info)
        self.writer.write(log_step, values)


def _next_epoch(exp: Experiment, source, pruner: Pruner, state, run: RunState | None, step: int) -> RunState:
    """The run state of the epoch that starts at `step`: the pruner's plan computed, then its decision."""
    epoch = 0 if run is None else run.epoch + 1
    last = None if run is None else run.last_resampling_epoch
    examples = step * exp.spec.batch_size
    needs = pruner.plan(epoch, examples, last_resampling_epoch=last)
    batch, embeddings, descriptors = exp.spec.pruning.embed_batch_size, None, None
    if needs.embed is not None:
        embed = exp.embed_fn(exp.spec.pruning.features)
        embeddings = features_lib.extract_features(lambda images: embed(state.teacher, images), source,
                                                   batch_size=batch, indices=needs.embed, mesh=exp.mesh,
                                                   desc="pruning embed")["features"]
    if needs.describe is not None:
        descriptors = features_lib.extract_features(copies.describe_batch, source, batch_size=batch,
                                                    indices=needs.describe, mesh=exp.mesh)["features"]
    table = jax.device_get(state.loss_stats) if needs.loss_table else None
    d = pruner.decide(epoch, examples, previous=None if run is None else run.subset, last_resampling_epoch=last,
                      embeddings=embeddings, descriptors=descriptors, loss_table=table)
    reports = ([] if run is None else run.reports) + ([d.report] if d.report else [])
    return RunState(num_samples=len(source), subset=d.subset, served=d.served, epoch=epoch,
                    epoch_start_step=step, resamplings=len(reports), reports=reports,
                    last_resampling_epoch=epoch if d.report else last)


def _start(exp: Experiment, source, pruner: Pruner, feed: _Feed, ckpt: Checkpointer, workdir: pathlib.Path):
    """(state, run state, data iterator) restored from the workdir or `config.resume`, else fresh."""
    restore_from = ckpt if ckpt.latest_step() is not None else None
    if restore_from is None and exp.spec.resume:
        restore_from = Checkpointer(exp.spec.resume, max_to_keep=exp.spec.keep_checkpoints)
        if restore_from.latest_step() is None:
            raise FileNotFoundError(f"config.resume: no checkpoint under {exp.spec.resume}")
    if restore_from is None:
        state = exp.init_state()
        run = _next_epoch(exp, source, pruner, state, None, 0)
        return state, run, feed.open(run)
    step = restore_from.latest_step()
    run = RunState.from_tree(restore_from.restore_run(step))
    if run.num_samples != len(source):
        raise ValueError(f"the checkpoint in {restore_from.directory} was trained on a pool of {run.num_samples} "
                         f"samples but config.data gives {len(source)}")
    data_iter = feed.open(run)
    state = exp.restore(restore_from, step, data_iterator=data_iter)
    if restore_from is not ckpt:
        restore_from.close()
    if jax.process_index() == 0:
        truncate_after(workdir / "metrics.jsonl", step)
    logging.warning("resumed from step %d (epoch %d) of %s", step, run.epoch, restore_from.directory)
    return state, run, data_iter


def _describe(source, run: RunState) -> dict[str, float]:
    """The selection's log fields, with the latest re-clustering's cluster-size summary."""
    info = selection_summary(source, run.served) | {"pruning/resamplings": run.resamplings}
    return info | (resampling_scalars(run.reports[-1]) if run.reports else {})


def _save(ckpt: Checkpointer, step: int, state, data_iter, run: RunState) -> None:
    if not bool(jax.device_get(state.finite)):
        raise NonFiniteLossError(f"non-finite loss before step {step}; not saved (last good checkpoint: "
                                 f"{ckpt.latest_step()} in {ckpt.directory})")
    ckpt.save(step, state=state, data_iterator=data_iter, run=run.to_tree())


def run(exp: Experiment, source, workdir: str | pathlib.Path, writer: MetricWriter, *,
        stop_at_step: int | None = None) -> Trained:
    """Trains `exp` on `source` in `workdir`, resuming from its latest checkpoint if any.

    Args:
      exp: the Experiment (spec, compiled functions, evaluators).
      source: the pretraining pool.
      workdir: where checkpoints and the pruning report go.
      writer: the run's metric log.
      stop_at_step: if set, save at this step and return (the schedules still span the whole budget):
        a shared prefix that other runs continue from with `config.resume`.
    """
    spec, workdir, is_main = exp.spec, pathlib.Path(workdir), jax.process_index() == 0
    pruner = Pruner(spec.pruning, num_samples=len(source), seed=spec.seed, total_examples=spec.total_examples)
    feed = _Feed(source, exp)
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=spec.keep_checkpoints)
    state, run_state, data_iter = _start(exp, source, pruner, feed, ckpt, workdir)
    image = np.asarray(source[0]["image"])  # the pipeline serves uint8 as is and any float as float16
    train_step = exp.compile_train_step(np.float16 if image.dtype.kind == "f" else image.dtype)
    step, t_start = int(jax.device_get(state.step)), time.perf_counter()
    end = exp.budget.total_steps if stop_at_step is None else min(stop_at_step, exp.budget.total_steps)
    bar = tqdm(total=exp.budget.total_steps, initial=step, disable=not (spec.progress and is_main), desc="pretrain",
               unit="step", dynamic_ncols=True)
    log = _MetricLog(writer, bar, batch_size=spec.batch_size, ckpt=ckpt, step=step)
    preempted = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.set())
    info, served = _describe(source, run_state), feed.steps(run_state)
    try:
        while step < end:
            batch = next(data_iter, None) if step - run_state.epoch_start_step < served else None
            if batch is None:  # the epoch's batches are all served (or its iterator ended)
                feed.retire(data_iter)
                run_state = _next_epoch(exp, source, pruner, state, run_state, step)
                data_iter, served, info = feed.open(run_state), feed.steps(run_state), _describe(source, run_state)
                if is_main and run_state.reports:
                    write_reports(workdir, run_state.reports)
                continue
            state, metrics, _ = train_step(state, sharding.shard_batch(
                exp.mesh, {k: batch[k] for k in ("image", "sample_id", "weight")}))
            step += 1
            bar.update(1)
            log.flush(step)
            if step % spec.log_every_steps == 0:
                log.hold(step, metrics, run_state.epoch, info)
            if step % spec.checkpoint_every_steps == 0 or preempted.is_set():
                _save(ckpt, step, state, data_iter, run_state)
            if preempted.is_set():
                raise _Preempted()
            if due := exp.due_evaluators(step):
                writer.write(step, {f"eval/{k}": v for k, v in exp.evaluate(state.teacher, names=due).items()}
                             | {"examples_seen": step * spec.batch_size})
        log.flush()
        if ckpt.latest_step() != step:
            _save(ckpt, step, state, data_iter, run_state)
    except _Preempted:
        ckpt.wait()
        logging.warning("SIGTERM: saved step %d in %s; rerun the same command to resume", step, ckpt.directory)
        raise SystemExit(143) from None
    finally:
        # Whatever stops the loop, the saves already started complete: a crash keeps the last good checkpoint.
        ckpt.close()
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
    if is_main:
        write_reports(workdir, run_state.reports)
    return Trained(state=state, run=run_state, step=step, train_seconds=time.perf_counter() - t_start)
