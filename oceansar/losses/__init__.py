"""Self-supervised objectives: pure, jit-friendly functions over arrays, one objective per module.

`dino` holds the DINO cross-entropy between centred, sharpened teacher and student crop distributions, returned per
sample ([B]) so that dynamic pruning can weight and record it, plus the centre EMA and collapse monitors; `koleo` holds
DINOv2's KoLeo regulariser, which spreads features by penalising small nearest-neighbour distances. Losses take
logits and features, never models or batches: the package imports only jax and no other part of `oceansar`.
Temperature schedules, the teacher EMA and the per-sample weights of the Selection are applied in `oceansar.train`.
"""
