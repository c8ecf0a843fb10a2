"""oceansar: the training system for self-supervised pretraining with data curation and dynamic pruning.

Three floors, each importing only the floors below it: `apps/` (one application per `launch.py --mode`; nothing in
the library imports it) -> the library rooms -> `curation/` (the standalone curation kernels, which never import
`oceansar`). The rooms: `experiment.py` (the Experiment: specs, mesh, optimizer, abstract state, compiled steps and
evaluators, built once from a config), `spec.py` (one typed, frozen, validated spec per config block), `train/` (train
state, train step, optimizer, schedules and the epoch loop), `pruning/` (per-sample loss statistics and the policies
that decide each epoch's Selection), `evals/` (frozen-feature extraction, k-NN with bootstrap, probes, retrieval),
`models/` (ViT backbone and DINO head), `losses/` (one objective per module), `data/` (sources, the Selection and the
Grain pipeline; numpy only, never jax), `augment.py` (on-device multi-crop and SAR-aware jitter), `embedding.py` (the
one jitted embedding function every consumer of features uses), `sharding.py` (the device mesh and sharding rules),
`checkpoint.py` (Orbax saves of train state, data iterator and run state), `release.py` (export and load of released
backbones), `metrics.py` (JSONL and TensorBoard metrics, run plots) and `flops.py` (FLOP accounting). Recipes and
their defaults live in `configs/` and flag parsing in `launch.py`, never here. This file imports nothing, so that
importing a subpackage (`oceansar.data` in a Grain worker process) does not start JAX.
"""
