"""The epoch loop: `run(experiment, source, workdir, writer)` trains a run to its budget or a stop step.

Each epoch starts at a boundary where the pruning policy plans what it needs (`Pruner.plan`), the loop
computes exactly that (the current teacher's embeddings of the planned indices, the host copy of the
loss table) and the policy decides the epoch's Selection (`Pruner.decide`); the Grain pipeline then
serves it. Each step dispatches the compiled train step without waiting for it (the host reads the
next batch while the device computes) and fetches the metrics of the previous log step only once the
next step is queued. An epoch ends when its known number of batches has been served, and its finished
iterator is closed off the training thread (joining Grain's workers takes most of a second). Resume
order: the workdir's own checkpoint, then `config.resume`, then a fresh state (`config.init_from`
fills its backbone); the metric log is cut to the step the run continues from. A non-finite loss
stops the run and the last good checkpoint stays untouched. SIGTERM or SIGINT saves at the next
step boundary, or at once with what was trained when it arrives while compiling, planning an epoch
or evaluating, and raises `Preempted` (`oceansar.train.preemption`). Each launch's steps and times
are recorded in the run state (`segments`). Final evaluation, release and summary belong to the
application that called the loop (`oceansar.apps.pretrain`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import pathlib
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
from oceansar.errors import ConfigError, DataNotFoundError
from oceansar.evals import features as features_lib
from oceansar.experiment import Experiment
from oceansar.metrics import MetricWriter
from oceansar.pruning.policies import Pruner
from oceansar.pruning.report import resampling_scalars, selection_summary, write_reports
from oceansar.train.preemption import Preempted, Preemption, interruptibly
from oceansar.train.run_state import RunState


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
        self.workers = pipeline.host_worker_count(exp.spec.data.worker_count)
        if exp.spec.data.worker_count == pipeline.AUTO_WORKERS:
            logging.info("data.worker_count = -1: %d Grain workers for this host", self.workers)

    def open(self, run: RunState):
        return iter(pipeline.epoch_dataset(
            self.source, run.served, seed=self.spec.seed, epoch=run.epoch, batch_size=self.local_batch,
            shard_index=jax.process_index(), shard_count=jax.process_count(), worker_count=self.workers))

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
                    last_resampling_epoch=epoch if d.report else last,
                    segments=[] if run is None else run.segments)


def _start(exp: Experiment, source, pruner: Pruner, feed: _Feed, ckpt: Checkpointer, writer: MetricWriter):
    """(state, run state, data iterator) restored from the workdir or `config.resume`, else fresh.

    The metric log is cut to the step the run continues from, so no step is ever logged twice.
    """
    restore_from = ckpt if ckpt.latest_step() is not None else None
    if restore_from is None and exp.spec.resume:
        restore_from = Checkpointer(exp.spec.resume, max_to_keep=exp.spec.keep_checkpoints)
        if restore_from.latest_step() is None:
            raise DataNotFoundError(f"config.resume: no checkpoint under {exp.spec.resume}")
    if restore_from is None:
        writer.truncate_after(0)
        state = interruptibly(exp.init_state, name="init-state")  # a compilation: a signal must not wait for it
        run = _next_epoch(exp, source, pruner, state, None, 0)
        return state, run, feed.open(run)
    step = restore_from.latest_step()
    run = RunState.from_tree(restore_from.restore_run(step))
    if run.num_samples != len(source):
        raise ConfigError(f"config.data: the checkpoint in {restore_from.directory} was trained on a pool of "
                          f"{run.num_samples} samples but config.data gives {len(source)}")
    data_iter = feed.open(run)
    state = exp.restore(restore_from, step, data_iterator=data_iter)
    if restore_from is not ckpt:
        restore_from.close()
    writer.truncate_after(step)
    logging.warning("resumed from step %d (epoch %d) of %s", step, run.epoch, restore_from.directory)
    return state, run, data_iter


def _describe(source, run: RunState) -> dict[str, float]:
    """The selection's log fields, with the latest re-clustering's cluster-size summary."""
    info = selection_summary(source, run.served) | {"pruning/resamplings": run.resamplings}
    return info | (resampling_scalars(run.reports[-1]) if run.reports else {})


class _Loop:
    """One launch's training: the restored (or fresh) run, its step, and how it saves and stops."""

    def __init__(self, exp: Experiment, source, workdir: pathlib.Path, writer: MetricWriter,
                 preemption: Preemption, wall_start: float):
        self.exp, self.source, self.spec, self.writer = exp, source, exp.spec, writer
        self.workdir, self.preemption, self.wall_start = workdir, preemption, wall_start
        self.is_main = jax.process_index() == 0
        self.pruner = Pruner(exp.spec.pruning, num_samples=len(source), seed=exp.spec.seed,
                             total_examples=exp.spec.total_examples)
        self.feed = _Feed(source, exp)
        self.ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=exp.spec.keep_checkpoints)
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.t_train: float | None = None
        try:
            self.state, self.run, self.data_iter = _start(exp, source, self.pruner, self.feed, self.ckpt, writer)
        except BaseException:
            self.ckpt.close()
            raise
        self.step = self.start_step = int(jax.device_get(self.state.step))
        self.history = list(self.run.segments)

    def train_seconds(self) -> float:
        return 0.0 if self.t_train is None else time.perf_counter() - self.t_train

    def segments(self) -> list[dict[str, Any]]:
        """Every launch that trained this run so far, this one up to the current step."""
        return self.history + [{"started": self.started, "start_step": self.start_step, "end_step": self.step,
                                "train_seconds": round(self.train_seconds(), 1),
                                "wall_seconds": round(time.time() - self.wall_start, 1)}]

    def save(self) -> None:
        if not bool(jax.device_get(self.state.finite)):
            raise NonFiniteLossError(f"non-finite loss before step {self.step}; not saved (last good checkpoint: "
                                     f"{self.ckpt.latest_step()} in {self.ckpt.directory})")
        run = dataclasses.replace(self.run, segments=self.segments())
        self.ckpt.save(self.step, state=self.state, data_iterator=self.data_iter, run=run.to_tree())

    def next_epoch(self) -> None:
        """Plans, computes and decides the next epoch; interruptible until the swap, which is whole."""
        run = _next_epoch(self.exp, self.source, self.pruner, self.state, self.run, self.step)
        data_iter, info = self.feed.open(run), _describe(self.source, run)
        with self.preemption.deferred():
            finished, self.run, self.data_iter, self.info = self.data_iter, run, data_iter, info
        self.feed.retire(finished)
        if self.is_main and run.reports:
            write_reports(self.workdir, run.reports)

    def stopped(self, signal_error: Preempted, log: _MetricLog) -> Preempted:
        """Saves what was trained since the last checkpoint, if anything; the error to raise."""
        log.flush()
        if self.step > self.start_step and self.ckpt.latest_step() != self.step:
            self.save()
        self.ckpt.wait()
        saved = self.ckpt.latest_step()
        detail = (f"step {saved} is saved in {self.ckpt.directory}" if saved is not None
                  else "nothing was trained yet") + "; rerun the same command to resume"
        return Preempted(signal_error.signum, detail)

    def train(self, end: int) -> None:
        """Steps until `end`, then saves; a signal stops it at the next step boundary."""
        if self.step >= end:  # a finished run relaunched (to evaluate after a stop): nothing to compile
            return
        image = np.asarray(self.source[0]["image"])  # the pipeline serves uint8 as is and any float as float16
        train_step = interruptibly(self.exp.compile_train_step, np.float16 if image.dtype.kind == "f" else image.dtype,
                                   name="compile-train-step")
        spec, mesh = self.spec, self.exp.mesh
        fields = tuple(self.exp.batch_spec(image.dtype))  # what the step reads of a batch
        bar = tqdm(total=self.exp.budget.total_steps, initial=self.step, desc="pretrain", unit="step",
                   disable=not (spec.progress and self.is_main), dynamic_ncols=True)
        log = _MetricLog(self.writer, bar, batch_size=spec.batch_size, ckpt=self.ckpt, step=self.step)
        self.info, self.t_train = _describe(self.source, self.run), time.perf_counter()
        try:
            while self.step < end:
                if self.step - self.run.epoch_start_step >= self.feed.steps(self.run):
                    self.next_epoch()  # the epoch's batches are all served
                    continue
                with self.preemption.deferred():
                    batch = next(self.data_iter)
                    self.state, metrics, _ = train_step(self.state, sharding.shard_batch(
                        mesh, {k: batch[k] for k in fields}))
                    self.step += 1
                    bar.update(1)
                    log.flush(self.step)
                    if self.step % spec.log_every_steps == 0:
                        log.hold(self.step, metrics, self.run.epoch, self.info)
                    if self.step % spec.checkpoint_every_steps == 0 or self.preemption.requested:
                        self.save()
                self.preemption.check()
                if due := self.exp.due_evaluators(self.step):
                    self.writer.write(self.step, {f"eval/{k}": v for k, v in
                                                  self.exp.evaluate(self.state.teacher, names=due).items()}
                                      | {"examples_seen": self.step * spec.batch_size})
            log.flush()
            if self.ckpt.latest_step() != self.step:
                self.save()
        except Preempted as e:
            raise self.stopped(e, log) from None
        finally:
            bar.close()

    def close(self) -> None:
        # Whatever stops the loop, the saves already started complete: a crash keeps the last good checkpoint.
        self.ckpt.close()
        if hasattr(self.data_iter, "close"):  # Grain's workers and their shared memory, now rather than at exit
            self.data_iter.close()


def run(exp: Experiment, source, workdir: str | pathlib.Path, writer: MetricWriter, *,
        stop_at_step: int | None = None, preemption: Preemption | None = None,
        wall_start: float | None = None) -> Trained:
    """Trains `exp` on `source` in `workdir`, resuming from its latest checkpoint if any.

    Args:
      exp: the Experiment (spec, compiled functions, evaluators).
      source: the pretraining pool.
      workdir: where checkpoints and the pruning report go.
      writer: the run's metric log.
      stop_at_step: if set, save at this step and return (the schedules still span the whole budget):
        a shared prefix that other runs continue from with `config.resume`.
      preemption: the launch's signal guard, entered by the caller; None enters one for this call.
      wall_start: `time.time()` when the launch started (default now), for the segment's wall time.

    Raises:
      Preempted: SIGTERM or SIGINT arrived; what was trained is saved (its message says where).
      NonFiniteLossError: the loss became NaN or infinite; the last good checkpoint is kept.
    """
    with contextlib.ExitStack() as stack:
        guard = preemption if preemption is not None else stack.enter_context(Preemption())
        loop = _Loop(exp, source, pathlib.Path(workdir), writer, guard,
                     time.time() if wall_start is None else wall_start)
        stack.callback(loop.close)
        end = exp.budget.total_steps if stop_at_step is None else min(stop_at_step, exp.budget.total_steps)
        loop.train(end)
        if loop.is_main:
            write_reports(loop.workdir, loop.run.reports)
        return Trained(state=loop.state, run=dataclasses.replace(loop.run, segments=loop.segments()),
                       step=loop.step, train_seconds=loop.train_seconds())
