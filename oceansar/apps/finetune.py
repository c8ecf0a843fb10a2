"""`launch.py --mode=finetune`: a pretrained backbone plus a linear head, trained on a labelled dataset.

The backbone comes from `config.init_from`: an oceansar release (which brings its variant, resolution and input
scale) or any timm / DINO / DINOv2 / transformers ViT file or timm / torchvision ResNet file
(`config.finetune.model` then says what it is), loaded with a report of every tensor. `config.finetune` chooses the
task (classification of the records' label, or regression of record fields such as wind speed and Hs), full
fine-tuning with layer-wise learning-rate decay or a linear probe, and the labelled source (the evaluators' sources:
the simulator's splits, class folders, TFDS, OpenSARShip). The workdir is a run like pretraining's: the config is
claimed, checkpoints are written every epoch and a rerun of the same command resumes exactly (every batch and every
random draw is a function of the seed and the step), metrics go to `metrics.jsonl` and TensorBoard, the test split
is evaluated every `eval_every_epochs` and at the end (with `config.evals`, pretraining's frozen-feature evaluators,
on the fine-tuned backbone), and the fine-tuned network is exported to `<workdir>/release` (the backbone and its
head in timm's layout; a regression head predicts physical units).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from oceansar import embedding, release, sharding
from oceansar import workdir as workdir_lib
from oceansar.checkpoint import Checkpointer, abstract_like
from oceansar.data import sources
from oceansar.data.synthetic import DB_RANGE
from oceansar.errors import ConfigError, DataNotFoundError
from oceansar.evals.evaluator import Evaluator
from oceansar.evals.knn import bootstrap_classification
from oceansar.evals.probes import regression_scores
from oceansar.metrics import MetricWriter
from oceansar.models.backbone import describe
from oceansar.models.classifier import Classifier
from oceansar.spec import EvalSpec, FinetuneSpec, build
from oceansar.train import finetune_step
from oceansar.train.loop import NonFiniteLossError
from oceansar.train.preemption import Preempted, Preemption
from oceansar.train.state import STATE_VARIABLES


def finetune_spec(config) -> FinetuneSpec:
    """The validated `config.finetune` block (errors name the field before anything is built)."""
    if "finetune" not in config:
        raise ConfigError("config.finetune: missing (--config=configs/finetune.py)")
    return build(FinetuneSpec, config.finetune, "finetune")


def _backbone(config, spec: FinetuneSpec) -> dict[str, Any]:
    """Variant, resolution, channels, LayerScale and input scale: the release's own, else `finetune.model`'s."""
    if config.init_from and not pathlib.Path(config.init_from).exists():
        raise DataNotFoundError(f"config.init_from: {config.init_from} does not exist (a release written by "
                                "--mode=export or pretraining, or a timm / DINOv2 / transformers .safetensors)")
    if config.init_from and release.is_release(config.init_from):
        return release.read_config(config.init_from, "config.init_from")
    m = spec.model
    if not m.variant:
        raise ConfigError("config.finetune.model.variant: empty, and config.init_from is no oceansar release that "
                          "would name it")
    describe(m.variant)
    return {"variant": m.variant, "img_size": m.img_size, "in_channels": m.in_channels, "layer_scale": m.layer_scale,
            "input_mean": m.mean, "input_std": m.std,
            "sigma0_db_range": list(DB_RANGE) if spec.data.source in ("synthetic_wv", "opensarship", "safe") else None}


def _arrays(source, spec: FinetuneSpec) -> dict[str, np.ndarray]:
    """Every record of a (small, in-memory) labelled split: images and the task's labels or targets."""
    batch = source.read_batch(np.arange(len(source)))
    out = {"image": np.asarray(batch["image"])}
    if spec.task == "classification":
        out["label"] = np.asarray(batch["label"], np.int32)
    else:
        missing = [t for t in spec.targets if t not in batch]
        if missing:
            raise ConfigError(f"config.finetune.targets: {missing} are not fields of {spec.data.source}'s records "
                              f"(they have {sorted(batch)})")
        out["targets"] = np.stack([np.asarray(batch[t], np.float32) for t in spec.targets], axis=1)
    return out


def _evaluators(config, spec: FinetuneSpec, backbone: dict[str, Any], graphdef
                ) -> tuple[dict[str, Evaluator], dict[str, Any]]:
    """`config.evals`' frozen-feature evaluators (pretraining's, by name; images read at `finetune.data.image_size`)
    and their embeddings of the fine-tuned backbone (its `graphdef`), so a fine-tuned network is measured as its
    release was."""
    evaluators, embeds = {}, {}
    for name, block in config.evals.items():
        e = build(EvalSpec, block, f"evals.{name}")
        if e.image_text:
            raise ConfigError(f"config.evals.{name}.probes: {e.probes} need a text tower; a fine-tuned backbone "
                              "has none")
        evaluators[name] = Evaluator(name, e, image_size=spec.data.image_size,
                                     in_channels=backbone["in_channels"], seed=config.seed, cache=True)
        embeds[name] = embedding.make_embed_fn(graphdef, mean=backbone["input_mean"], std=backbone["input_std"],
                                               img_size=backbone["img_size"], in_channels=backbone["in_channels"],
                                               features=e.features)
    return evaluators, embeds


def _evaluate(predict, params, *, data: dict[str, np.ndarray], spec: FinetuneSpec, mesh, num_classes: int,
              target_mean: np.ndarray, target_std: np.ndarray, seed: int, evaluators=None, embeds=None
              ) -> dict[str, float]:
    """Test metrics of the network (bootstrap std over the test set): top-1 and balanced accuracy, or RMSE (and
    R^2) per target in physical units, as the regression probe reports them; then each of `evaluators` on the
    backbone's frozen features (`<name>/<metric>`, as pretraining reports them)."""
    n, block = len(data["image"]), 8 * mesh.size
    outputs = []
    for start in range(0, n, block):
        images = data["image"][start:start + block]
        pad = block - len(images)
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]) if pad else images
        outputs.append(np.asarray(predict(params, jax.device_put(images, sharding.batch_sharded(mesh))))[:block - pad])
    outputs = np.concatenate(outputs)
    if spec.task == "classification":
        correct = outputs.argmax(-1) == data["label"]
        stats = bootstrap_classification(correct[None], data["label"], num_classes=num_classes,
                                         n_bootstrap=spec.n_bootstrap, seed=seed)
        names = {"acc": "top1", "acc_std": "top1_std", "balanced_acc": "balanced_acc",
                 "balanced_acc_std": "balanced_acc_std"}
        results = {f"test/{names[k]}": float(v[0]) for k, v in stats.items()}
    else:
        predicted, results = outputs * target_std + target_mean, {}
        for i, name in enumerate(spec.targets):
            rmse, std, r2 = regression_scores(predicted[:, i], data["targets"][:, i], seed,
                                              n_bootstrap=spec.n_bootstrap)
            results |= {f"test/{name}/rmse": float(rmse), f"test/{name}/rmse_std": float(std),
                        f"test/{name}/r2": float(r2)}
    for name, evaluator in (evaluators or {}).items():
        embed = embeds[name]
        results |= evaluator(lambda images: embed(params["backbone"], images), mesh=mesh, seed=seed)
    return results


@dataclasses.dataclass
class _Data:
    """The two splits in memory, the task's outputs and the training targets' standardisation."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    class_names: list[str]
    outputs: int
    target_mean: np.ndarray
    target_std: np.ndarray
    steps_per_epoch: int


def _load_data(config, spec: FinetuneSpec, backbone: dict[str, Any]) -> _Data:
    train_src, test_src = sources.make_eval_sources(spec.data, image_size=spec.data.image_size,
                                                    in_channels=backbone["in_channels"], seed=config.seed, cache=True)
    train, test = _arrays(train_src, spec), _arrays(test_src, spec)
    class_names = list(getattr(train_src, "class_names", None) or [])
    if spec.task == "classification" and (not class_names or "label" not in train):
        raise ConfigError(f"config.finetune.data.source: {spec.data.source} records carry no single-label class "
                          "(config.finetune.task=classification needs one; regression takes record fields)")
    if spec.task == "classification":
        outputs, target_mean, target_std = len(class_names), np.zeros(0, np.float32), np.ones(0, np.float32)
    else:
        outputs = len(spec.targets)
        target_mean, target_std = train["targets"].mean(0), train["targets"].std(0) + 1e-6
        train["targets"] = (train["targets"] - target_mean) / target_std
    steps_per_epoch = len(train["image"]) // spec.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config.finetune.batch_size: {spec.batch_size} exceeds the {len(train['image'])} "
                          "training records")
    return _Data(train, test, class_names, outputs, target_mean, target_std, steps_per_epoch)


@dataclasses.dataclass
class _Network:
    """The Classifier's initial state (backbone loaded), its jitted step and prediction, and the load report."""

    state: finetune_step.FinetuneState
    step_fn: Any
    predict: Any
    report: Any
    backbone_graphdef: Any     # the backbone alone, for the frozen-feature evaluators


def _build(config, spec: FinetuneSpec, backbone: dict[str, Any], data: _Data, mesh) -> _Network:
    model = Classifier(backbone["variant"], img_size=backbone["img_size"], in_channels=backbone["in_channels"],
                       outputs=data.outputs, layer_scale=backbone.get("layer_scale", 0.0),
                       drop_path_rate=spec.drop_path_rate, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model, STATE_VARIABLES)
    report = None
    if config.init_from:
        pure = nnx.to_pure_dict(params)
        pure["backbone"], report = release.load_params(config.init_from, like=pure["backbone"],
                                                       field="config.init_from")
        nnx.replace_by_pure_dict(params, pure)
        logging.warning("config.init_from: %s", report.summary())
    arch = describe(backbone["variant"])
    tx, schedule = finetune_step.make_optimizer(spec, params, depth=arch["depth"], stage_blocks=arch.get("layers", ()),
                                                steps_per_epoch=data.steps_per_epoch)
    state = finetune_step.FinetuneState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                        rng=jax.random.PRNGKey(config.seed + 1))
    view = dict(mean=backbone["input_mean"], std=backbone["input_std"], img_size=backbone["img_size"])
    step_fn = jax.jit(finetune_step.make_train_step(graphdef, tx, schedule, spec, **view), donate_argnums=0)
    return _Network(sharding.replicate(mesh, state), step_fn, finetune_step.make_predict(graphdef, **view), report,
                    nnx.split(model.backbone, STATE_VARIABLES)[0])


def _train(config, spec: FinetuneSpec, data: _Data, net: _Network, workdir: pathlib.Path, mesh, evaluate, *,
           stop_at_step: int | None):
    """The epochs from the latest checkpoint on: (state, the last test metrics), or None when stopped early."""
    ckpt = Checkpointer(workdir / "checkpoints")
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    total_steps, per_epoch, state, final = spec.epochs * data.steps_per_epoch, data.steps_per_epoch, net.state, {}
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore_state(start, abstract_state=abstract_like(state))
        print(f"resuming {workdir} from step {start} of {total_steps}")
    writer.truncate_after(start)
    try:
        with Preemption() as preemption:
            for step in tqdm(range(start, total_steps), initial=start, total=total_steps, desc="finetune",
                             disable=not (config.progress and jax.process_index() == 0)):
                epoch, i = divmod(step, per_epoch)
                if i == 0 or step == start:  # one shuffle per epoch, a function of (seed, epoch) for the resume
                    order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train["image"]))
                idx = order[i * spec.batch_size:(i + 1) * spec.batch_size]
                batch = sharding.shard_batch(mesh, {k: v[idx] for k, v in data.train.items()})
                with preemption.deferred():
                    state, metrics = net.step_fn(state, batch)
                done = step + 1
                saving = done % per_epoch == 0 or preemption.requested or done == stop_at_step
                if saving or done % spec.log_every_steps == 0 or done == total_steps:
                    metrics = jax.device_get(metrics)
                    if not np.isfinite(metrics["train/loss"]):  # checked before a save: the last good one is kept
                        raise NonFiniteLossError(
                            f"the fine-tuning loss is {metrics['train/loss']} at step {done}; checkpoint step "
                            f"{ckpt.latest_step()} is the last good one (lower config.finetune.lr)")
                    writer.write(done, metrics | {"epoch": done / per_epoch})
                if saving:
                    ckpt.save(done, state=state, data_iterator=None, run={"epoch": np.int32(done // per_epoch)})
                    if done == total_steps or (spec.eval_every_epochs and done % per_epoch == 0
                                               and (done // per_epoch) % spec.eval_every_epochs == 0):
                        final = evaluate(state.params)
                        writer.write(done, {f"eval/{k}": v for k, v in final.items()})
                preemption.check()
                if done == stop_at_step:
                    ckpt.wait()
                    return None
    except Preempted as e:
        ckpt.wait()
        raise Preempted(e.signum, f"step {ckpt.latest_step()} is saved in {workdir}; rerun the same command to "
                                  "resume") from None
    finally:
        ckpt.close()
        writer.close()
    return state, final or evaluate(state.params)  # none yet: resumed after the last checkpoint, before its eval


def finetune(config, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict[str, Any]:
    """Fine-tunes per `config` in `workdir` and returns the summary (see the module docstring); with
    `stop_at_step` it saves there and returns {"steps": ...} unfinished.

    Raises:
      ConfigError: a bad `config.finetune` field or `init_from`, named before anything compiles.
      Preempted: SIGTERM or SIGINT; the last finished epoch is saved, a rerun resumes from it.
    """
    wall_start = time.time()
    spec = finetune_spec(config)
    workdir = pathlib.Path(workdir)
    workdir_lib.claim(workdir, config, write=jax.process_index() == 0)
    if (done := workdir_lib.finished(workdir)) is not None:
        print(f"{workdir} is a finished fine-tuning run; its results are in {workdir / workdir_lib.SUMMARY_FILE}")
        return done
    backbone = _backbone(config, spec)
    if describe(backbone["variant"])["kind"] == "resnet" and spec.drop_path_rate:
        raise ConfigError(f"config.finetune.drop_path_rate: {spec.drop_path_rate} is stochastic depth, a ViT option; "
                          f"the ResNet {backbone['variant']!r} takes 0")
    if jax.process_count() > 1:  # every process would feed the whole batch: slicing it per process is not built
        raise ConfigError("config.finetune: --mode=finetune runs in one process (its labelled sets are small)")
    mesh = sharding.make_mesh(config.num_devices or None)
    if spec.batch_size % mesh.size:
        raise ConfigError(f"config.finetune.batch_size: {spec.batch_size} is not a multiple of the {mesh.size} "
                          "devices")
    data = _load_data(config, spec, backbone)
    net = _build(config, spec, backbone, data, mesh)
    evaluators, embeds = _evaluators(config, spec, backbone, net.backbone_graphdef)
    evaluate = functools.partial(_evaluate, net.predict, data=data.test, spec=spec, mesh=mesh,
                                 num_classes=len(data.class_names), target_mean=data.target_mean,
                                 target_std=data.target_std, seed=config.seed, evaluators=evaluators, embeds=embeds)
    trained = _train(config, spec, data, net, workdir, mesh, evaluate, stop_at_step=stop_at_step)
    if trained is None:
        return {"steps": stop_at_step}
    state, final = trained
    report = net.report
    summary = {"steps": spec.epochs * data.steps_per_epoch, "epochs": spec.epochs, "task": spec.task,
               "mode": spec.mode, "train_records": len(data.train["image"]), "test_records": len(data.test["image"]),
               "init_from": config.init_from,
               "loaded": None if report is None else {"loaded": len(report.loaded), "adapted": dict(report.adapted),
                                                      "skipped": list(report.skipped),
                                                      "created": list(report.created)},
               "wall_seconds": round(time.time() - wall_start, 1), "final": final}
    if jax.process_index() == 0:
        release.export_finetuned(workdir / "release", params=jax.device_get(nnx.to_pure_dict(state.params)),
                                 backbone=backbone, task=spec.task, class_names=data.class_names,
                                 targets=list(spec.targets), target_mean=data.target_mean,
                                 target_std=data.target_std, summary=summary, recipe=config.name)
        workdir_lib.write_atomic(workdir / workdir_lib.SUMMARY_FILE, json.dumps(summary, indent=2))
        print("fine-tuned network on the test split" + (" and its backbone's frozen features (config.evals):"
                                                         if evaluators else ":"))
        for key in sorted(k for k in final if not k.endswith("_std")):
            std = final.get(f"{key}_std")
            print(f"  {key:<32s}{final[key]:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
    return summary
