"""Self-supervised objectives: pure, jit-friendly functions over arrays, one objective per module.

`dino` holds the DINO cross-entropy between the teacher's target and the student's crop distributions, returned per
sample ([B]) so that dynamic pruning can weight and record it, plus collapse monitors; `ibot` the masked-patch
cross-entropy of iBOT, per sample too; `centering` how teacher logits become targets (DINO's EMA centre or DINOv2's
Sinkhorn-Knopp); `koleo` DINOv2's KoLeo regulariser, which spreads features by penalising small nearest-neighbour
distances. Together they are DINOv2's objective. `contrastive` holds the image-text objectives of vision-language
pretraining, CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss, with learnable temperatures, per sample
and over the global batch. Losses take logits and features, never models or batches: the package imports only jax
and no other part of `oceansar`.
Temperature schedules, the teacher EMA and the per-sample weights of the Selection are applied in `oceansar.train`.
"""
