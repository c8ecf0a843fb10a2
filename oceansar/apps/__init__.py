"""The application floor: one module per `launch.py --mode`, each a function of (config, workdir).

`pretrain` (train, evaluate, release, summarise), `evaluate` and `export` (a run's latest checkpoint),
`embed` (a pool's embeddings with a release), `curate` (offline curation recipes on embeddings) and
`compare` (curation methods at equal compute), `finetune` (a
backbone and a head on a labelled set), plus the simulator's figure command. This is the only
floor that reads several rooms of the library to run a job; nothing in `oceansar/` outside it, nor in
`curation/`, imports it. No training logic lives here: the loop, the Experiment, the policies and the
kernels are the library's.
"""
from oceansar.apps import compare, curate, embed, evaluate, export, finetune, pretrain

MODES = {"pretrain": pretrain.pretrain, "evaluate": evaluate.evaluate, "export": export.export,
         "embed": embed.embed, "curate": curate.curate, "compare": compare.compare,
         "finetune": finetune.finetune}
