"""`launch.py --mode=pretrain`: train a run in its workdir, then evaluate, release and summarise it.

The job around the epoch loop: the config is validated into a spec and saved as `config.json`, the
pool is built, the Experiment and the metric log are made, `oceansar.train.loop.run` trains (resuming
the workdir's checkpoint), and a finished run is evaluated by every named evaluator (and, when asked,
the same architecture at random init), released (`release/`), plotted and summarised
(`summary.json`, printed). A run stopped at `stop_at_step` only releases its teacher: it is a shared
prefix that other runs continue from (the comparison's warm-up).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from oceansar import release
from oceansar.data import sources
from oceansar.experiment import Experiment, run_spec
from oceansar.metrics import MetricWriter, plot_run, read_jsonl
from oceansar.pruning.report import plot_pruning
from oceansar.train import loop


def format_results(title: str, results: dict[str, float]) -> str:
    """`title` and one `key value ± std` line per metric."""
    keys = [k for k in sorted(results) if not k.endswith("_std") and isinstance(results[k], float)]
    return title + "\n" + "\n".join(
        f"  {k:<31s} {results[k]:.4f}" + (f" ± {results[k + '_std']:.4f}" if k + "_std" in results else "")
        for k in keys)


def _summary(exp: Experiment, trained: loop.Trained, final: dict[str, float]) -> dict[str, Any]:
    run, spec = trained.run, exp.spec
    return {
        "steps": trained.step, "examples_seen": trained.step * spec.batch_size,
        "train_seconds": round(trained.train_seconds, 1),
        "pruning": {"policy": spec.pruning.policy, "epochs": run.epoch + 1, "resamplings": run.resamplings,
                    "subset_size": len(run.subset), "selection_size": len(run.served),
                    "kept_fraction": round(len(run.served) / exp.num_samples, 4),
                    "distinct_seen_fraction": round(float(
                        (jax.device_get(trained.state.loss_stats["count"]) > 0).mean()), 4)},
        "evaluated": [list(c) for e in exp.evaluators.values() for c in e.headline()],
        "final": final}


def pretrain(config, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict[str, Any]:
    """Pretrains per `config` in `workdir`; returns the summary (steps and examples only for a prefix)."""
    spec = run_spec(config)
    workdir, is_main = pathlib.Path(workdir), jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    source = sources.make_pretrain_source(spec.data, seed=spec.seed)
    exp = Experiment.build(spec, num_samples=len(source))
    writer = MetricWriter(workdir, enabled=is_main)
    try:
        trained = loop.run(exp, source, workdir, writer, stop_at_step=stop_at_step)
        examples = trained.step * spec.batch_size
        if trained.step < exp.budget.total_steps:
            if is_main:
                release.export(workdir / "release", teacher_params=trained.state.teacher, spec=spec)
            return {"steps": trained.step, "examples_seen": examples}
        final = exp.evaluate(trained.state.teacher, progress=spec.progress and is_main)
        writer.write(trained.step, {f"eval/{k}": v for k, v in final.items()} | {"examples_seen": examples})
    finally:
        writer.close()
    summary = _summary(exp, trained, final)
    if spec.eval_at_init:
        summary["at_init"] = exp.evaluate(exp.init_state(init_from=False).teacher)
    if is_main:
        release.export(workdir / "release", teacher_params=trained.state.teacher, spec=spec)
        records = read_jsonl(workdir / "metrics.jsonl")
        plot_run(records, workdir / "metrics.png")
        if spec.pruning.policy != "none":
            plot_pruning(records, trained.run.reports, workdir / "pruning.png")
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_results(f"teacher after {summary['examples_seen']} examples:", final))
        if "at_init" in summary:
            print(format_results("same architecture at random init:", summary["at_init"]))
    return summary
