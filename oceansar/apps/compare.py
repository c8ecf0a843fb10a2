"""`launch.py --mode=compare`: curation methods trained at equal compute, one table and two figures.

For each seed, one full-data warm-up prefix is trained (`pretrain(..., stop_at_step)`, T_w rounded up
to an epoch boundary, schedules spanning the whole budget) and released. The static methods embed the
pool with that warm-up teacher (`--mode=embed`) and curate it once (`--mode=curate`: SemDeDup at the
eps whose kept fraction is closest to rho, hierarchical k-means balanced sampling to rho). Every
method then continues from the warm-up checkpoint to the same number of examples seen, so the runs
differ only in what they train on after T_w (and "full" is exactly an uninterrupted full-data run).
Results are read back from each run's `summary.json` and `metrics.jsonl`; the table's columns are the
headline metrics of the evaluators that ran (`summary.json`'s `evaluated`). A finished run is never
redone and an interrupted one resumes from its own checkpoint, so rerunning the command continues; rerun
with other evaluators (`config.evals`), a finished run's final teacher is evaluated again instead
(`evaluation.json`).

Two more axes are named config patches, each (objective, data) pair a variant trained from its own warm-up
at the same budget: `compare.objectives` (e.g. DINOv2's `{"ibot": {"weight": 1.0}, "dino": {"koleo_weight":
0.1}}`) and `compare.data` (e.g. Less-is-More's controlled duplication, `{"data": {"duplication": {"scheme":
"uniform"}}}`). A patch may set `compare.methods` for its variant (a duplicated pool trains only `full`).
Runs live in `seed<s>/<objective>/<data>/<method>`, each axis named only when it has more than one entry,
and the paired table also gives each variant's full-data run minus the first variant's. A method may carry
parameters, `static_hkmeans@rho=0.05` (a subset of 5 % of the pool), `static_semdedup@eps=0.1` (SemDeDup
at that eps instead of the eps that keeps rho) or a dynamic method's levers of `config.pruning`
(`dynamic@features=cls,eta=1`), so subsets of several sizes and policies compare in one table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from oceansar import release
from oceansar import workdir as workdir_lib
from oceansar.apps.curate import curate
from oceansar.apps.embed import embed
from oceansar.apps.pretrain import pretrain
from oceansar.data import pipeline, sources
from oceansar.data.selection import KEPT_FILE
from oceansar.errors import ConfigError
from oceansar.experiment import restore_latest, run_spec
from oceansar.metrics import read_jsonl
from oceansar.pruning.report import ENGAGEMENT

METHODS = {                       # method -> pruning.policy
    "full": "none",
    "random": "random",
    "static_semdedup": "static",
    "static_hkmeans": "static",
    "dynamic": "cluster_balanced",
    "dynamic_infobatch": "cluster_balanced+infobatch",
}


# The parameters a method may carry: rho for every subset method, eps for SemDeDup, and for the dynamic methods
# the scalar levers of `config.pruning` (`dynamic@features=cls,eta=1`). The warm-up is shared by every method of
# a seed, so T_w is not among them.
_DYNAMIC_LEVERS = ("features", "eta", "every_epochs", "subset_size", "n_resamples", "whiten", "copy_dedup_eps",
                   "prune_ratio", "delta")
PARAMETERS = {m: ("rho", "eps") if m == "static_semdedup" else ("rho", *_DYNAMIC_LEVERS) if "dynamic" in m
              else ("rho",) for m in METHODS if m != "full"}


# A finished run's results under evaluators other than those it was trained with (see `_evaluation`).
EVALUATION_FILE = "evaluation.json"


def _value(text: str) -> float | bool | str:
    """A parameter's value: a number, true/false, or a name (`features=cls`)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """`static_hkmeans@rho=0.05` -> (`static_hkmeans`, {"rho": 0.05}); parameters are comma-separated
    (`dynamic@features=cls,eta=1` -> (`dynamic`, {"features": "cls", "eta": 1.0})).

    Raises:
      ConfigError: naming `config.compare.methods` for an unknown method or parameter.
    """
    method, _, parameters = name.partition("@")
    if method not in METHODS:
        raise ConfigError(f"config.compare.methods: unknown {name!r}; known: {tuple(METHODS)}")
    parsed: dict[str, Any] = {}
    for parameter in filter(None, parameters.split(",")):
        key, sep, value = parameter.partition("=")
        if key not in PARAMETERS.get(method, ()) or not sep or not value:
            known = ", ".join(f"{k}=<value>" for k in PARAMETERS.get(method, ())) or "no parameter"
            raise ConfigError(f"config.compare.methods: {name!r}: {method} takes {known}")
        parsed[key] = _value(value)
        if key in ("rho", "eps") and not isinstance(parsed[key], float):
            raise ConfigError(f"config.compare.methods: {name!r}: {key} must be a number, got {value!r}")
    return method, parsed


def _ordered(config, names) -> list[str]:
    """`names` in `compare.order` (a ConfigDict lists its keys sorted), any not named there after, sorted."""
    order = list(config.compare.get("order", ()))
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def objectives(config) -> list[str]:
    """The objective axis: the names of `compare.objectives`, the reference (first) first."""
    return _ordered(config, config.compare.objectives.keys())


def data_variants(config) -> list[str]:
    """The data axis: the names of `compare.data`, the reference (first) first."""
    return _ordered(config, config.compare.data.keys())


def variants(config) -> list[tuple[str, str]]:
    """Every (objective, data) pair, objectives first: each trains from its own warm-up."""
    return [(o, d) for o in objectives(config) for d in data_variants(config)]


def variant_name(config, variant: tuple[str, str]) -> str:
    """`objective/data`, each part only when its axis has more than one entry ("" when neither has)."""
    axes = (objectives(config), data_variants(config))
    return "/".join(name for name, axis in zip(variant, axes) if len(axis) > 1)


def arm(config, variant: tuple[str, str], method: str) -> str:
    """The run name (and directory under `seed<s>/`) of one method of one variant."""
    return "/".join(filter(None, (variant_name(config, variant), method)))


def variant_methods(config, variant: tuple[str, str]) -> tuple[str, ...]:
    """The methods a variant trains: `compare.methods`, or its own where its patch sets them."""
    return tuple(_arm_config(config, config.compare.seeds[0], variant).compare.methods)


def arms(config) -> list[str]:
    """Every trained run's name, variant by variant."""
    return [arm(config, v, m) for v in variants(config) for m in variant_methods(config, v)]


def _check(config) -> None:
    """Names the bad field before anything trains."""
    if not config.compare.seeds:
        raise ConfigError("config.compare.seeds: empty")
    for axis, names in (("objectives", objectives(config)), ("data", data_variants(config))):
        if not names or any("/" in name for name in names):
            raise ConfigError(f"config.compare.{axis}: give at least one named config patch (names without '/')")
    for variant in variants(config):  # every patch and method applies and validates before anything trains
        base = _arm_config(config, config.compare.seeds[0], variant)
        if not base.compare.methods:
            raise ConfigError(f"config.compare.methods: empty for {variant_name(config, variant) or 'the run'}")
        for method in base.compare.methods:
            c = _method_config(base, method)
            c.pruning.selection = "curated" if c.pruning.policy == "static" else ""  # curated after the warm-up
            run_spec(c)
    if not any(e.every_examples > 0 for e in config.evals.values()):
        raise ConfigError("config.evals: the comparison evaluates along the budget; give an evaluator "
                         "every_examples > 0")


def pool_size(config) -> int:
    """The number of samples in the pool the config describes, counted on the pool itself (not read
    into memory): a folder's images, a redundant pool's records, the simulator's `num_samples`."""
    spec = run_spec(config)
    data = dataclasses.replace(spec.data, cache=False)
    return len(sources.make_pretrain_source(data, seed=spec.seed, progress=False, text=spec.text))


def _prefix_steps(config, n: int) -> int:
    """The warm-up prefix: T_w examples rounded up to a full-data epoch boundary of a pool of n."""
    per_epoch = pipeline.steps_per_epoch(n, config.batch_size)
    if per_epoch == 0:
        raise ConfigError(f"config.batch_size={config.batch_size} exceeds the pool of {n} samples")
    return max(1, math.ceil(config.pruning.warmup_examples / (per_epoch * config.batch_size))) * per_epoch


def _curate_config(config, method: str, n: int, embed_dir: pathlib.Path):
    """The curate recipe of a static method (`config` is its run's: rho applied), sized from the pool of n:
    hierarchical k from `compare.hkmeans_divisors`, SemDeDup's clusters from
    `compare.semdedup_points_per_cluster` and its eps the method's, else found from the target fraction rho."""
    cmp = config.compare
    kind, parameters = parse_method(method)
    c = (cmp.curate_semdedup if kind == "static_semdedup" else cmp.curate_hkmeans).copy_and_resolve_references()
    c.embeddings, c.seed = str(embed_dir), config.seed
    if kind == "static_semdedup":
        c.semdedup.n_clusters = max(n // cmp.semdedup_points_per_cluster, 2)
        if "eps" in parameters:
            c.semdedup.target_fraction = 0.0
            c.semdedup.eps, c.semdedup.eps_list = parameters["eps"], (parameters["eps"],)
        else:
            c.semdedup.target_fraction = config.pruning.rho
    else:
        c.hkmeans.n_clusters = tuple(max(n // d, 2) for d in cmp.hkmeans_divisors)
        c.target_fraction = config.pruning.rho
    return c


def _static_selections(config, seed_dir: pathlib.Path, release_dir: pathlib.Path, methods,
                       n: int) -> dict[str, pathlib.Path]:
    """Embeds the pool with the warm-up teacher and curates it once per static method."""
    out: dict[str, pathlib.Path] = {}
    wanted = [m for m in methods if METHODS[parse_method(m)[0]] == "static"]
    if not wanted:
        return out
    embed_dir = seed_dir / "embed"
    if not (embed_dir / "embed.json").is_file():
        e = _embed_config(config, release_dir)
        embed(e, embed_dir)
    for method in wanted:
        curate_dir = seed_dir / f"curate_{method.removeprefix('static_')}"
        out[method] = curate_dir
        if not (curate_dir / KEPT_FILE).is_file():
            curate(_curate_config(_method_config(config, method), method, n, embed_dir), curate_dir)
    return out


def _embed_config(config, release_dir: pathlib.Path):
    e = ml_collections.ConfigDict()
    e.name, e.seed, e.release = "embed", config.seed, str(release_dir)
    e.data = config.data.copy_and_resolve_references()
    e.batch_size = config.pruning.embed_batch_size
    e.num_devices, e.progress = config.num_devices, False
    return e


def _arm_config(config, seed: int, variant: tuple[str, str]):
    """The config of one seed and variant: its objective's patch, then its data patch, field by field."""
    c = config.copy_and_resolve_references()
    c.seed = seed

    def patch(block, values, path, where):
        for key, value in values.items():
            if key not in block:
                raise ConfigError(f"config.compare.{where}: {path}{key} is not a config field")
            if hasattr(value, "items"):
                patch(block[key], value, f"{path}{key}.", where)
            else:
                block[key] = value

    objective, data = variant
    patch(c, config.compare.objectives[objective], "", f"objectives.{objective}")
    patch(c, config.compare.data[data], "", f"data.{data}")
    return c


def _lever(method: str, key: str, field: Any, value: Any) -> Any:
    """A method's parameter as the type of the `config.pruning` field it replaces (4.0 for an int field is 4)."""
    if isinstance(field, bool):
        ok = isinstance(value, bool)
    elif isinstance(field, int):
        ok = isinstance(value, float) and value.is_integer()
    elif isinstance(field, float):
        ok = isinstance(value, float)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"config.compare.methods: {method!r}: pruning.{key} must be of type {type(field).__name__}, "
                          f"got {value!r}")
    return type(field)(value)


def _method_config(base, method: str):
    """A variant's config with the method's policy and parameter applied."""
    kind, parameters = parse_method(method)
    c = base.copy_and_resolve_references()
    c.pruning.policy = METHODS[kind]
    for key, value in parameters.items():
        if key != "eps":  # SemDeDup's eps goes to its curate config
            c.pruning[key] = _lever(method, key, c.pruning[key], value)
    return c


def run_all(config, workdir: pathlib.Path) -> dict[str, Any]:
    """Trains every (seed, variant, method) that is not finished yet; returns the raw results."""
    seeds, all_variants = tuple(config.compare.seeds), variants(config)
    is_main = jax.process_index() == 0
    bar = tqdm(total=len(seeds) * sum(len(variant_methods(config, v)) + 1 for v in all_variants),
               desc="compare", unit="run", disable=not is_main, dynamic_ncols=True)
    raw: dict[str, Any] = {"objectives": objectives(config), "data": data_variants(config), "variants": {},
                           "runs": {}}
    for seed in seeds:
        for variant in all_variants:
            base = _arm_config(config, seed, variant)
            methods = tuple(base.compare.methods)
            n = pool_size(base)
            prefix = _prefix_steps(base, n)
            raw["variants"][variant_name(config, variant)] = {"pool_size": n, "prefix_steps": prefix}
            warm = workdir / f"seed{seed}" / arm(config, variant, "warmup")
            arm_dir = warm.parent
            if not release.is_release(warm / "release"):
                warm_config = base.copy_and_resolve_references()
                warm_config.pruning.policy = "none"
                pretrain(warm_config, warm, stop_at_step=prefix)
            bar.update(1)
            static = _static_selections(base, arm_dir, warm / "release", methods, n)
            for method in methods:
                run_dir = arm_dir / method
                name = arm(config, variant, method)
                if not (run_dir / "summary.json").is_file():
                    c = _method_config(base, method)
                    c.pruning.selection = str(static.get(method, ""))
                    c.resume = str(warm / "checkpoints")
                    c.eval_at_init = method == methods[0] and variant == all_variants[0]  # once per seed
                    bar.set_postfix(seed=seed, run=name)
                    pretrain(c, run_dir)
                raw["runs"][f"{name}/seed{seed}"] = _read_run(run_dir, warm, config.evals)
                bar.update(1)
        first = workdir / f"seed{seed}" / arm(config, all_variants[0], variant_methods(config, all_variants[0])[0])
        raw["runs"][f"at_init/seed{seed}"] = {"final": _evaluation(first, config.evals)["at_init"]}
    bar.close()
    first = raw["variants"][variant_name(config, all_variants[0])]
    raw["pool_size"], raw["prefix_steps"] = first["pool_size"], first["prefix_steps"]
    return raw


def _as_json(evals) -> dict[str, Any]:
    """Evaluator configs as stored in JSON (tuples as lists), so a stored and a current one compare."""
    return json.loads(json.dumps(evals.to_dict()))


def _evaluation(run_dir: pathlib.Path, evals) -> dict[str, Any]:
    """A finished run's final results (and random-init reference, when it has one) under the evaluators
    `evals`: its summary's when it was evaluated by them, else its final teacher (and its initialisation)
    evaluated again, once, and kept in `EVALUATION_FILE`. So tightening the evaluation (more probe images,
    another split) re-evaluates the trained runs instead of mixing old numbers in, or training them again."""
    summary = json.loads((run_dir / "summary.json").read_text())
    stored = workdir_lib.stored_config(run_dir)
    own = {"final": summary["final"], "evaluated": summary["evaluated"], "at_init": summary.get("at_init")}
    wanted = _as_json(evals)
    if stored is None or _as_json(stored.evals) == wanted:
        return own
    path = run_dir / EVALUATION_FILE
    if path.is_file() and (done := json.loads(path.read_text()))["evals"] == wanted:
        return done
    c = stored.copy_and_resolve_references()
    c.evals = evals.copy_and_resolve_references()
    c.progress = False
    exp, state, step = restore_latest(run_spec(c), run_dir)
    done = {"evals": wanted, "step": step, "final": exp.evaluate(state.teacher),
            "evaluated": [list(h) for h in exp.headline()],
            "at_init": exp.evaluate(exp.init_state(init_from=False).teacher) if "at_init" in summary else None}
    if jax.process_index() == 0:
        workdir_lib.write_atomic(path, json.dumps(done, indent=2))
    return done


def _read_run(run_dir: pathlib.Path, warm: pathlib.Path, evals) -> dict[str, Any]:
    """The run's final results under the evaluators `evals`, its evaluation curve (as evaluated while it
    trained) and its examples-weighted class mix, the shared warm-up prefix included."""
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = _evaluation(run_dir, evals)
    records = read_jsonl(warm / "metrics.jsonl") + read_jsonl(run_dir / "metrics.jsonl")
    curve = [{"examples_seen": r["examples_seen"], **{k[len("eval/"):]: v for k, v in r.items()
                                                      if k.startswith("eval/")}}
             for r in records if any(k.startswith("eval/") for k in r)]
    train = [r for r in records if "train/loss" in r]
    share_keys = sorted({k for r in train for k in r if k.startswith("pruning/class_share/")})
    mix = {k.rsplit("/", 1)[-1]: float(np.mean([r.get(k, 0.0) for r in train])) for k in share_keys}
    own = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]  # after the warm-up
    engaged = {k: float(np.mean([r[f"pruning/{k}"] for r in own])) for k in ENGAGEMENT
               if own and all(f"pruning/{k}" in r for r in own)}
    pool = {k: own[0][f"pool/{k}"] for k in ENGAGEMENT if own and f"pool/{k}" in own[0]}
    return {"final": evaluation["final"], "reevaluated": "evals" in evaluation,
            "pruning": summary["pruning"], "evaluated": evaluation["evaluated"],
            "train_seconds": summary["train_seconds"], "curve": curve, "class_mix": mix,
            "engagement": engaged, "pool_engagement": pool}


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def paired_table(raw: dict[str, Any], config) -> str:
    """Each method minus full data on the same seed and variant (same pool, init and warm-up), and each
    variant's full data minus the first variant's: mean ± standard error of the paired difference over seeds,
    and whether it is beyond two standard errors."""
    seeds, cols, all_variants = tuple(config.compare.seeds), columns(raw), variants(config)
    full = {v: arm(config, v, "full") for v in all_variants if "full" in variant_methods(config, v)}
    pairs = [(arm(config, v, m), full[v], f"{arm(config, v, m)} − {'full data' if len(all_variants) == 1 else full[v]}")
             for v in full for m in variant_methods(config, v) if m != "full"]
    first = all_variants[0]
    if first in full:
        pairs += [(full[v], full[first], f"{variant_name(config, v)} − {variant_name(config, first)} (full data)")
                  for v in all_variants[1:] if v in full]
    head = ["paired difference"] + [title for _, title, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b, label in pairs:
        row = [label]
        for key, _, higher in cols:
            d = np.array([raw["runs"][f"{a}/seed{s}"]["final"][key] - raw["runs"][f"{b}/seed{s}"]["final"][key]
                          for s in seeds])
            se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
            better = (d.mean() > 2 * se) if higher else (d.mean() < -2 * se)
            row.append(f"{d.mean():+.3f} ± {se:.3f}" + (" (> 2 SE)" if d.size > 1 and better else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def engagement_table(raw: dict[str, Any], config) -> str:
    """Redundancy of what each method trained on after the warm-up (mean over log steps and seeds), next to
    its pool's (one row per data variant), from the pool's hidden classes and duplicate groups."""
    seeds = config.compare.seeds
    runs = {v: {arm(config, v, m): [raw["runs"][f"{arm(config, v, m)}/seed{s}"] for s in seeds]
                for m in variant_methods(config, v)} for v in variants(config)}
    every = [r for per_variant in runs.values() for rs in per_variant.values() for r in rs]
    keys = [k for k in ENGAGEMENT if all(k in r["engagement"] and k in r["pool_engagement"] for r in every)]
    if not keys:
        return ""
    lines = ["| selection | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    pools_shown = set()
    for (_, data), per_variant in runs.items():
        if data not in pools_shown:  # the pool is the data variant's, whatever the objective
            pools_shown.add(data)
            pool = np.mean([[r["pool_engagement"][k] for k in keys] for rs in per_variant.values() for r in rs], 0)
            label = "pool" if len(data_variants(config)) == 1 else f"pool: {data}"
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in pool) + " |")
        for name, rs in per_variant.items():
            lines.append(f"| {name} | "
                         + " | ".join(f"{np.mean([r['engagement'][k] for r in rs]):.3f}" for k in keys) + " |")
    return "\n".join(lines)


def columns(raw: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(metric key, title, higher is better) of the headline metrics every run evaluated."""
    runs = [r for k, r in raw["runs"].items() if not k.startswith("at_init/")]
    return [tuple(c) for c in runs[0]["evaluated"] if all(c[0] in r["final"] for r in runs)]


def table(raw: dict[str, Any], config) -> str:
    """The markdown results table: final evaluation, mean ± std over seeds, best in bold."""
    methods = ["at_init"] + arms(config)
    seeds = tuple(config.compare.seeds)
    cols = columns(raw)
    cells: dict[str, dict[str, tuple[float, float]]] = {}
    for m in methods:
        runs = [raw["runs"][f"{m}/seed{s}"] for s in seeds]
        cells[m] = {key: _stats([r["final"][key] for r in runs]) for key, _, _ in cols}
        if m != "at_init":
            cells[m]["seconds"] = _stats([r["train_seconds"] for r in runs])
            cells[m]["kept"] = _stats([r["pruning"]["kept_fraction"] for r in runs])
            cells[m]["resamplings"] = _stats([r["pruning"]["resamplings"] for r in runs])
            cells[m]["distinct"] = _stats([r["pruning"]["distinct_seen_fraction"] for r in runs])
    best = {}
    for key, _, higher in cols:
        means = {m: cells[m][key][0] for m in arms(config)}
        best[key] = (max if higher else min)(means, key=means.get)
    head = (["method"] + [title for _, title, _ in cols]
            + ["final kept", "pool seen", "resamplings", "train s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m if m != "at_init" else "random init (reference)"]
        for key, _, _ in cols:
            mean, std = cells[m][key]
            text = f"{mean:.3f} ± {std:.3f}"
            row.append(f"**{text}**" if best.get(key) == m else text)
        if m == "at_init":
            row += ["", "", "", ""]
        else:
            row += [f"{cells[m]['kept'][0]:.2f}", f"{cells[m]['distinct'][0]:.2f}",
                    f"{cells[m]['resamplings'][0]:.1f}",
                    f"{cells[m]['seconds'][0]:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _reevaluated_note(raw: dict[str, Any]) -> str:
    runs = [r for k, r in raw["runs"].items() if not k.startswith("at_init/")]
    again = sum(r["reevaluated"] for r in runs)
    if not again:
        return ""
    return (f" {again} of the {len(runs)} runs were trained under other evaluators: their final teachers (and "
            "the random initialisations) were evaluated again by these (`evaluation.json`), while the curves "
            "keep the evaluations made during training.")


def plot_curves(raw: dict[str, Any], config, out: pathlib.Path) -> None:
    """Each evaluation metric against examples seen, one line per method (mean over seeds, ± std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(raw)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.6), squeeze=False)
    colors = plt.cm.tab10.colors if len(arms(config)) <= 10 else plt.cm.tab20.colors  # one colour per run
    for ax, (key, title, _) in zip(axes[0], cols):
        ax.set_prop_cycle(color=colors)
        for method in arms(config):
            curves = [{p["examples_seen"]: p[key] for p in raw["runs"][f"{method}/seed{s}"]["curve"]
                       if key in p} for s in config.compare.seeds]
            xs = sorted(set.intersection(*(set(c) for c in curves)))
            ys = np.array([[c[x] for x in xs] for c in curves])
            ax.plot(xs, ys.mean(0), marker=".", label=method)
            if len(curves) > 1:
                ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.15)
        ax.axvline(raw["prefix_steps"] * config.batch_size, color="gray", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_class_mix(raw: dict[str, Any], config, out: pathlib.Path) -> bool:
    """The hidden class mix each method trained on (examples-weighted over the run, warm-up included)."""
    mixes = {m: [raw["runs"][f"{m}/seed{s}"]["class_mix"] for s in config.compare.seeds]
             for m in arms(config)}
    classes = list(next(iter(mixes.values()))[0])
    if not classes:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(classes)), 3.8))
    ax.set_prop_cycle(color=plt.cm.tab10.colors if len(mixes) <= 10 else plt.cm.tab20.colors)
    width = 0.8 / len(mixes)
    for i, (method, per_seed) in enumerate(mixes.items()):
        shares = [np.mean([mix[c] for mix in per_seed]) for c in classes]
        ax.bar(np.arange(len(classes)) + (i - (len(mixes) - 1) / 2) * width, shares, width, label=method)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of examples seen")
    ax.set_title("class mix of each method's training selection (hidden labels)")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def compare(config, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs the comparison in `workdir` and writes results.md, results.json and the figures."""
    _check(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = run_all(config, workdir)
    if jax.process_index() != 0:
        return raw
    md = table(raw, config)
    prefix = raw["prefix_steps"] * config.batch_size
    engaged = engagement_table(raw, config)
    several = len(variants(config)) > 1
    pools = ", ".join(f"{name}: {v['pool_size']}" for name, v in raw["variants"].items())
    text = "\n".join([
        f"# Equal-compute comparison: {config.total_examples} examples seen per run",
        "",
        f"Model {config.model.variant}"
        + (f", objectives {', '.join(objectives(config))}" if len(objectives(config)) > 1 else "")
        + (f", data variants {', '.join(data_variants(config))} (pool sizes {pools})"
           if len(data_variants(config)) > 1 else "")
        + f", pool of {raw['pool_size']} {config.data.source} images"
        + (" (redundant pool transform)" if config.data.pool_transform.enabled else "")
        + f", batch {config.batch_size}, seeds {list(config.compare.seeds)}; every method continues "
        + ("its variant's" if several else "the same")
        + f" full-data warm-up of {prefix} examples"
        + (" (rounded up to an epoch of each variant's pool)" if several else "")
        + ". Final evaluation of the teacher by the evaluators "
        f"{', '.join(config.evals.keys())}; "
        "mean ± std over seeds; best method per column in bold. `final kept`: the fraction of the pool "
        "in the last epoch's selection; `pool seen`: the fraction of the pool trained on at least once. "
        "`train s`: training wall time including resamplings and "
        "intermediate evaluations." + _reevaluated_note(raw),
        "",
        md,
        "",
        "Paired differences: each method minus full data on the same seed (same pool, initialisation and "
        "warm-up)" + (", and each variant's full data minus the first's" if several else "")
        + ", mean ± standard error over seeds.",
        "",
        paired_table(raw, config),
        "",
        *(["Redundancy of the served selections after the warm-up (hidden truth of the pool; mean over log "
           "steps and seeds): share of the pool's head class, effective number of classes (exp of the class "
           "entropy), near-duplicate share (visits that repeat a duplicate group) and duplicate groups "
           "visited more than once.", "", engaged, ""] if engaged else []),
        "![accuracy versus examples seen](accuracy.png)",
        "",
        "![class mix](class_mix.png)",
        "",
    ])
    (workdir / "results.md").write_text(text)
    (workdir / "results.json").write_text(json.dumps(raw, indent=1))
    plot_curves(raw, config, workdir / "accuracy.png")
    plot_class_mix(raw, config, workdir / "class_mix.png")
    print(md)
    return raw
