"""Evaluation on frozen features: extraction, k-NN with bootstrap, probes, retrieval and the named evaluators.

`features` extracts the features of any source with a given jitted embedding function, in static-shape batches read
through the data pipeline; `knn` holds cosine k-NN classification (DINO's weighted vote; k = 1 is 1-NN), the test-set
bootstrap and the input checks every evaluator shares; `probes` holds the logistic-regression classification probe,
the ridge regression probe and `evaluate_features`, which runs k-NN and every probe on extracted features;
`retrieval` computes recall@K of queries against a gallery; `evaluator` is one named evaluator of `config.evals`
(its labelled splits, the probes its spec names and its headline metrics); `across` averages a k-NN accuracy over
several evaluators' datasets with the combined bootstrap std (Less-is-More's headline). Evaluators are handed the
embedding function and never build, train or change a model: the package may import `oceansar.data` (sources,
pipeline), `oceansar.spec`, jax and optax, but never `models`, `losses`, `train`, `pruning` or `oceansar.apps`.
"""
