"""Dynamic pruning: per-sample loss statistics and the policies that decide which samples each epoch visits.

`loss_stats` holds the on-device table of batch-relative per-sample loss statistics (EMA mean and variance, count,
last step seen) that the train step updates every step; `policies` holds the subset policies (`none`, `random`,
`static`, `cluster_balanced`), the InfoBatch loss rule and `Pruner`, which composes them as a plan (what the coming
epoch needs) and a decision (the subset and the Selection served from it); `report` holds the re-clustering reports
and the pruning figure. A policy never calls back into the loop and keeps no state between epochs: the loop computes
the embeddings and loss table it asks for and hands them over. The package may import `curation` (clustering and
balanced sampling), `oceansar.data.selection` and `oceansar.spec`, but never `oceansar.train`, `evals`, `models` or
`oceansar.apps`.
"""
