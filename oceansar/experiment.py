"""The Experiment: everything a run computes with, built once from a config.

`Experiment.build(config, num_samples=N)` validates the config into a `RunSpec` (every field named on
error, before anything compiles), makes the mesh, the optimizer and the budget, derives the model's
graph and the abstract train state with `jax.eval_shape` (nothing materialised: evaluate and export
restore into it straight from a checkpoint), and holds the embedding functions and the named
evaluators. The train step is compiled ahead of time (`compile_train_step`), and its per-device memory
and FLOPs are logged before step 1. Every application, benchmark and test builds its model, state and
step through here, so there is one construction sequence.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oceansar import augment, embedding, release, sharding
from oceansar.checkpoint import Checkpointer
from oceansar.evals import across
from oceansar.data import sources
from oceansar.data.tokenizer import CaptionTokenizer
from oceansar.errors import ConfigError
from oceansar.evals.evaluator import Evaluator
from oceansar.evals.image_text import ImageTextEvaluator
from oceansar.spec import RunSpec
from oceansar.train import contrastive_step
from oceansar.train import optimizer as optim_lib
from oceansar.train import state as state_lib
from oceansar.train import step as step_lib
from oceansar.train.run_state import RunState
from oceansar.train.state import TrainState


# An image-text run's caption tokenizer, beside its checkpoints: what evaluating the workdir again needs.
TOKENIZER_FILE = "tokenizer.json"


def _state_shaped(abstract: TrainState, mesh, min_size: int) -> TrainState:
    """The train state's shapes with their shardings: student, teacher and optimizer state by the FSDP rule
    (`sharding.param_sharding`), the rest (centres, loss table, step, key) replicated."""
    def shaped(x, sharding_):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)

    replicated = sharding.replicated(mesh)
    by_rule = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: shaped(x, sharding.param_sharding(mesh, x.shape, min_size=min_size)), tree)
    return jax.tree.map(lambda x: shaped(x, replicated), abstract).replace(
        params=by_rule(abstract.params), teacher=by_rule(abstract.teacher), opt_state=by_rule(abstract.opt_state))


def program_report(compiled) -> dict[str, float]:
    """Per-device FLOPs and buffer sizes of a compiled program, where the backend reports them."""
    out: dict[str, float] = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        if cost and "flops" in cost:
            out["flops"] = float(cost["flops"])
    except Exception:  # noqa: BLE001 - backends without cost analysis raise assorted errors
        pass
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - as above
        stats = None
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes", "peak_memory_in_bytes"):
        if stats is not None and getattr(stats, field, None) is not None:
            out[field] = int(getattr(stats, field))
    return out


def run_spec(config) -> RunSpec:
    """The validated spec of a training config, checked against this job's devices and processes."""
    return RunSpec.from_config(config, num_devices=config.num_devices or jax.device_count(),
                               process_count=jax.process_count(), platform=jax.default_backend())


def _evaluator(spec: RunSpec, name: str, e, tokenizer) -> Evaluator | ImageTextEvaluator:
    """The evaluator of `config.evals.<name>`: frozen image features, or the image-text model's two towers."""
    if not e.image_text:
        return Evaluator(name, e, image_size=spec.data.image_size, in_channels=spec.model.in_channels,
                         seed=spec.seed, cache=spec.data.cache)
    if tokenizer is None:
        raise ConfigError(f"config.evals.{name}.probes: {e.probes} need the run's caption tokenizer (its pool's)")
    make = functools.partial(sources.make_captioned_test_source, e, text=spec.text, tokenizer=tokenizer,
                             image_size=spec.data.image_size, seed=spec.seed, cache=spec.data.cache)
    return ImageTextEvaluator(name, e, make, tokenizer, context_length=spec.text.context_length)


@dataclasses.dataclass
class Experiment:
    """A run's model, optimizer, abstract state, shardings, compiled functions and evaluators."""

    spec: RunSpec
    num_samples: int
    mesh: jax.sharding.Mesh
    budget: step_lib.Budget
    tx: optax.GradientTransformation
    graphdef: nnx.GraphDef
    rest: nnx.State
    backbone_graphdef: nnx.GraphDef
    abstract_state: TrainState
    evaluators: dict[str, Evaluator | ImageTextEvaluator]
    tokenizer: Any = None      # an image-text run's caption tokenizer (its pool's)
    _embed_fns: dict[str, Callable] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, spec: RunSpec, *, num_samples: int, tokenizer=None) -> "Experiment":
        """The Experiment of `spec` (see `run_spec`) over a pool of `num_samples` samples; an image-text run's
        retrieval and zero-shot evaluators tokenise with the pool's `tokenizer`."""
        mesh = sharding.make_mesh(spec.num_devices or None, spec.mesh.fsdp)
        tx = optim_lib.make_optimizer(spec.optim)
        model = nnx.eval_shape(lambda: state_lib.build_model(spec))
        graphdef, _, rest = nnx.split(model, state_lib.STATE_VARIABLES, ...)
        if jax.tree.leaves(rest):  # the step closes over `rest`: it must hold no arrays of its own
            raise NotImplementedError(f"models with variables other than {state_lib.STATE_VARIABLES}")
        abstract = jax.eval_shape(lambda: state_lib.init_state(spec, num_samples=num_samples, tx=tx)[2])
        evaluators = {name: _evaluator(spec, name, e, tokenizer) for name, e in spec.evals.items()}
        backbone_graphdef = nnx.split(model.backbone, state_lib.STATE_VARIABLES)[0]
        return cls(spec=spec, num_samples=num_samples, mesh=mesh, budget=step_lib.Budget.from_spec(spec), tx=tx,
                   graphdef=graphdef, rest=rest, backbone_graphdef=backbone_graphdef,
                   abstract_state=_state_shaped(abstract, mesh, spec.mesh.fsdp_min_size), evaluators=evaluators,
                   tokenizer=tokenizer)

    def init_state(self, *, init_from: bool = True) -> TrainState:
        """The initial train state in its shardings (replicated, parameters split over `fsdp` under FSDP).

        Args:
          init_from: fill the backbones from `config.init_from` when it is set (False: the random-init
            reference of a summary).
        """
        # One compiled program writes every tensor straight into its sharding: built eagerly, each initializer
        # is a program of its own and the whole state lands on one device first.
        build = jax.jit(lambda: state_lib.init_state(self.spec, num_samples=self.num_samples, tx=self.tx)[2],
                        out_shardings=jax.tree.map(lambda x: x.sharding, self.abstract_state))
        state = build()
        if init_from and self.spec.init_from:
            state = jax.device_put(self._init_from(state, self.spec.init_from),
                                   jax.tree.map(lambda x: x.sharding, self.abstract_state))
        return state

    def _init_from(self, state: TrainState, path: str) -> TrainState:
        """Student and teacher backbones from a release; head, optimizer and the rest stay fresh."""
        pure = nnx.to_pure_dict(state.params)
        pure["backbone"], report = release.load_params(path, like=pure["backbone"], field="config.init_from")
        params = state.params
        nnx.replace_by_pure_dict(params, pure)
        logging.warning("config.init_from: %s Heads initialised fresh.", report.summary())
        return state.replace(params=params, teacher=jax.tree.map(jnp.copy, params),
                             opt_state=self.tx.init(params))

    def restore(self, ckpt: Checkpointer, step: int, *, data_iterator=None) -> TrainState:
        """The train state of `step` of `ckpt`, restored straight into the mesh's shardings."""
        return ckpt.restore_state(step, abstract_state=self.abstract_state, data_iterator=data_iterator)

    def batch_spec(self, image_dtype) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of one global training batch with `image_dtype` pixels, sharded over `data` (with an image-text
        run's caption fields)."""
        b, size, channels = self.spec.batch_size, self.spec.data.image_size, self.spec.model.in_channels
        sharded = sharding.batch_sharded(self.mesh)
        shapes = {"image": ((b, size, size, channels), np.dtype(image_dtype)), "sample_id": ((b,), np.int64),
                  "weight": ((b,), np.float32)}
        if self.spec.text.enabled:
            m, length = self.spec.text.max_captions, self.spec.text.context_length
            shapes |= {"caption_ids": ((b, m, length), np.int32), "caption_valid": ((b, m), np.bool_),
                       "caption_count": ((b, m), np.int32), "caption_weights": ((b, m), np.float32),
                       "caption_tokens": ((b,), np.int32)}
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharded) for k, (shape, dtype) in shapes.items()}

    def compile_train_step(self, image_dtype, *, update_loss_stats: bool = True, log: bool = True):
        """The train step compiled ahead of time for batches of `image_dtype` pixels, state donated.

        Logs the compiled program's per-device memory and FLOPs (`program_report`).
        """
        make = contrastive_step.make_train_step if self.spec.text.enabled else step_lib.make_train_step
        fn = make(self.graphdef, self.rest, self.tx, self.spec, self.budget, update_loss_stats=update_loss_stats)
        state_shardings = jax.tree.map(lambda x: x.sharding, self.abstract_state)
        out_shardings = (state_shardings, sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh))
        jitted = jax.jit(fn, donate_argnums=(0,), out_shardings=out_shardings)
        compiled = jitted.lower(self.abstract_state, self.batch_spec(image_dtype)).compile()
        if log and jax.process_index() == 0:
            report = program_report(compiled)
            flops = report.get("flops", float("nan")) / max(self.spec.batch_size // self.mesh.size, 1)
            temp = report.get("temp_size_in_bytes", 0) + report.get("argument_size_in_bytes", 0)
            print(f"train step compiled for {self.mesh.size} device(s): {flops / 1e9:.3g} GFLOP per sample (XLA), "
                  f"{temp / 2**20:.1f} MiB of arguments and temporaries per device")
            logging.info("train step program: %s", report)
        return compiled

    def embed_fn(self, features: str = "cls") -> Callable[[Any, jax.Array], jax.Array]:
        """`embed(teacher_params, images) -> [B, D]` of the teacher's backbone (not normalised), compiled once."""
        if features not in self._embed_fns:
            fn = embedding.make_embed_fn(
                self.backbone_graphdef, mean=self.spec.data.mean, std=self.spec.data.std,
                img_size=self.spec.crops.global_size, in_channels=self.spec.model.in_channels, features=features)
            self._embed_fns[features] = lambda params, images: fn(params["backbone"], images)
        return self._embed_fns[features]

    def image_text_fns(self) -> tuple[Callable, Callable]:
        """`embed_image(params, images) -> [B, E]` and `embed_text(params, ids) -> [N, E]`: an image-text model's
        two towers into the joint space (not normalised), jitted."""
        if "image_text" not in self._embed_fns:
            d, size = self.spec.data, self.spec.crops.global_size

            def embed_image(params, images):
                model = nnx.merge(self.graphdef, params, self.rest)
                return model.encode_image(augment.center_view(augment.standardize(images, mean=d.mean, std=d.std),
                                                              size))

            def embed_text(params, ids):
                return nnx.merge(self.graphdef, params, self.rest).encode_text(ids)
            self._embed_fns["image_text"] = (jax.jit(embed_image), jax.jit(embed_text))
        return self._embed_fns["image_text"]

    def evaluate(self, teacher_params, *, names=None, progress: bool = False) -> dict[str, float]:
        """Runs the named evaluators (all by default) on a teacher; keys are `<evaluator>/<metric>`, plus
        `mean/knn/...` over the datasets when several evaluators run the same k-NN (`evals.across`)."""
        results: dict[str, float] = {}
        for name in names if names is not None else self.evaluators:
            evaluator = self.evaluators[name]
            if isinstance(evaluator, ImageTextEvaluator):
                image, text = self.image_text_fns()
                results |= evaluator(lambda images: image(teacher_params, images),
                                     lambda ids: text(teacher_params, ids), mesh=self.mesh, progress=progress)
                continue
            embed = self.embed_fn(evaluator.spec.features)
            results |= evaluator(lambda images: embed(teacher_params, images), mesh=self.mesh,
                                 seed=self.spec.seed, progress=progress)
        return results | across.mean_over_datasets(results)

    def headline(self) -> list[tuple[str, str, bool]]:
        """(metric key, title, higher is better) of the metrics a results table shows: each evaluator's, then
        the mean over datasets when there is one."""
        return ([c for e in self.evaluators.values() for c in e.headline()]
                + across.headline(self.evaluators.values()))

    def due_evaluators(self, step: int) -> list[str]:
        """The evaluators whose interval ends at `step` (the end of the budget excluded: evaluated then)."""
        every = {name: e.spec.every_examples // self.spec.batch_size for name, e in self.evaluators.items()}
        return [name for name, n in every.items() if n and step % n == 0 and step < self.budget.total_steps]


def restore_latest(spec: RunSpec, workdir) -> tuple[Experiment, TrainState, int]:
    """The Experiment of a run's workdir (with an image-text run's tokenizer, `TOKENIZER_FILE`) and its latest
    checkpoint's train state, restored directly.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
    """
    tokenizer_file = pathlib.Path(workdir) / TOKENIZER_FILE
    tokenizer = CaptionTokenizer.load(tokenizer_file) if tokenizer_file.is_file() else None
    directory = pathlib.Path(workdir) / "checkpoints"
    ckpt = Checkpointer(directory)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}: run --mode=pretrain first")
    num_samples = RunState.from_tree(ckpt.restore_run(step)).num_samples
    exp = Experiment.build(spec, num_samples=num_samples, tokenizer=tokenizer)
    state = exp.restore(ckpt, step)
    ckpt.close()
    return exp, state, step
