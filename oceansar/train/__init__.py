"""Training: the train state, the jitted DINO train step, its optimizer and schedules, and the epoch loop.

`state` holds `TrainState`, the one pytree of student and teacher parameters, optimizer state, DINO centre and
loss-statistics table; `step` holds `train_step`, the whole on-device step (augmentation, forwards, weighted
per-sample loss, clipped AdamW, teacher EMA, centering, loss-statistics update); `optimizer` holds AdamW with weight
decay on matrices only and per-tensor gradient clipping; `schedules` holds the schedules as pure functions of the
global step (warm-up + cosine, cosine, linear warm-up, WSD); `run_state` holds `RunState`, the loop's counters,
current Selection and re-clustering reports, checkpointed beside the train state; `loop` holds `run`, the epoch loop
that asks the pruning policy for each epoch's Selection, serves it through the Grain pipeline, evaluates on schedule,
checkpoints and resumes. This is the top room of the library: it may import the other rooms (`experiment`, `spec`,
`pruning`, `evals`, `models`, `losses`, `data`, `augment`, `sharding`, `checkpoint`, `metrics`), never
`oceansar.apps`; final evaluation, release and summary belong to the application that calls the loop.
"""
