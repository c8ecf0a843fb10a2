"""`launch.py --mode=pretrain`: train a run in its workdir, then evaluate, release and summarise it.

The job around the epoch loop: the config is validated into a spec and recorded as the workdir's
`config.json` (or checked against it: `oceansar.workdir`), a finished run is left as it is, the pool
is built, the Experiment and the metric log are made, `oceansar.train.loop.run` trains (resuming
the workdir's checkpoint), and a finished run is evaluated by every named evaluator (and, when asked,
the same architecture at random init), released (`release/`), plotted and summarised
(`summary.json`, last, with the training and wall time of every launch that trained it, and the
pool's skipped files; printed). A run stopped at `stop_at_step` only releases its teacher: it is a shared
prefix that other runs continue from (the comparison's warm-up).
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax

from oceansar import release
from oceansar import workdir as workdir_lib
from oceansar.data import sources
from oceansar.experiment import TOKENIZER_FILE, Experiment, run_spec
from oceansar.metrics import MetricWriter, plot_run, read_jsonl
from oceansar.pruning.report import plot_pruning
from oceansar.train import loop
from oceansar.train.preemption import Preemption


def format_results(title: str, results: dict[str, float]) -> str:
    """`title` and one `key value ± std` line per metric."""
    keys = [k for k in sorted(results) if not k.endswith("_std") and isinstance(results[k], float)]
    return title + "\n" + "\n".join(
        f"  {k:<31s} {results[k]:.4f}" + (f" ± {results[k + '_std']:.4f}" if k + "_std" in results else "")
        for k in keys)


def _summary(exp: Experiment, source, trained: loop.Trained, final: dict[str, float],
             wall_start: float) -> dict[str, Any]:
    run, spec = trained.run, exp.spec
    segments = [dict(s) for s in run.segments]
    segments[-1]["wall_seconds"] = round(time.time() - wall_start, 1)  # this launch's evaluation included
    return {
        "steps": trained.step, "examples_seen": trained.step * spec.batch_size,
        "train_seconds": round(sum(s["train_seconds"] for s in segments), 1),
        "wall_seconds": round(sum(s["wall_seconds"] for s in segments), 1),
        "segments": segments,
        "data": {"pool_size": exp.num_samples, "skipped_files": int(getattr(source, "num_skipped", 0)),
                 "first_skipped": list(getattr(source, "skipped_files", []))[:10]},
        "pruning": {"policy": spec.pruning.policy, "epochs": run.epoch + 1, "resamplings": run.resamplings,
                    "subset_size": len(run.subset), "selection_size": len(run.served),
                    "kept_fraction": round(len(run.served) / exp.num_samples, 4),
                    "distinct_seen_fraction": round(float(
                        (jax.device_get(trained.state.loss_stats["count"]) > 0).mean()), 4)},
        "evaluated": [list(c) for c in exp.headline()],
        "final": final}


def pretrain(config, workdir: str | pathlib.Path, *, stop_at_step: int | None = None,
             on_config_change: str = "refuse") -> dict[str, Any]:
    """Pretrains per `config` in `workdir`; returns the summary (steps and examples only for a prefix).

    A workdir whose run is finished (`summary.json` written) is not trained, evaluated or released
    again: its summary is returned. A workdir that holds another run's config is refused unless
    `on_config_change="override"` (see `oceansar.workdir.claim`).

    Raises:
      Preempted: SIGTERM or SIGINT; what was trained is saved.
      WorkdirError: the workdir holds a run with another config.
    """
    wall_start = time.time()
    spec = run_spec(config)
    workdir, is_main = pathlib.Path(workdir), jax.process_index() == 0
    workdir_lib.claim(workdir, config, on_config_change, write=is_main)
    if (done := workdir_lib.finished(workdir)) is not None:
        print(f"{workdir} is a finished run ({done['steps']} steps, {done['examples_seen']} examples); nothing "
              f"to do. Its results are in {workdir / workdir_lib.SUMMARY_FILE}; --mode=evaluate or --mode=export "
              f"read its checkpoint again.")
        return done
    with Preemption() as preemption:
        source = sources.make_pretrain_source(spec.data, seed=spec.seed, text=spec.text)
        tokenizer = getattr(source, "tokenizer", None)
        if tokenizer is not None and is_main:  # --mode=evaluate of this workdir tokenises as its training did
            tokenizer.save(workdir / TOKENIZER_FILE)
        exp = Experiment.build(spec, num_samples=len(source), tokenizer=tokenizer)
        writer = MetricWriter(workdir, enabled=is_main)
        try:
            trained = loop.run(exp, source, workdir, writer, stop_at_step=stop_at_step, preemption=preemption,
                               wall_start=wall_start)
            examples = trained.step * spec.batch_size
            if trained.step < exp.budget.total_steps:
                if is_main:
                    release.export(workdir / "release", teacher_params=trained.state.teacher, spec=spec,
                                   tokenizer=tokenizer)
                return {"steps": trained.step, "examples_seen": examples}
            final = exp.evaluate(trained.state.teacher, progress=spec.progress and is_main)
            writer.write(trained.step, {f"eval/{k}": v for k, v in final.items()} | {"examples_seen": examples})
        finally:
            writer.close()
        summary = _summary(exp, source, trained, final, wall_start)
        if spec.eval_at_init:
            summary["at_init"] = exp.evaluate(exp.init_state(init_from=False).teacher)
        if is_main:
            _finish(workdir, exp, trained, summary, tokenizer)
    return summary


def _finish(workdir: pathlib.Path, exp: Experiment, trained: loop.Trained, summary: dict[str, Any],
            tokenizer) -> None:
    """Release, figures, then `summary.json` last: its presence marks the run finished."""
    release.export(workdir / "release", teacher_params=trained.state.teacher, spec=exp.spec, tokenizer=tokenizer,
                   summary=summary)
    records = read_jsonl(workdir / "metrics.jsonl")
    plot_run(records, workdir / "metrics.png")
    if exp.spec.pruning.policy != "none":
        plot_pruning(records, trained.run.reports, workdir / "pruning.png")
    workdir_lib.write_atomic(workdir / workdir_lib.SUMMARY_FILE, json.dumps(summary, indent=2))
    print(format_results(f"teacher after {summary['examples_seen']} examples:", summary["final"]))
    if "at_init" in summary:
        print(format_results("same architecture at random init:", summary["at_init"]))
