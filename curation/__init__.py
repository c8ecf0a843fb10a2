"""curation: offline data-curation kernels on embeddings and images, usable alone on a `.npy` of embeddings.

`kmeans/` holds blockwise k-means in JAX (k-means++ and k-means|| seeding, Lloyd iterations, nearest-centroid
assignment); `hierarchical` holds hierarchical k-means with resampling (Vo et al. 2024, arXiv 2405.15613); `sampling`
holds balanced hierarchical sampling by water-filling, with OceanSAR-1's eta within-leaf policy (arXiv 2504.06962);
`dedup` holds SemDeDup (arXiv 2303.09540); `entropy` holds the local 2-D image entropy and the entropy filter of
RS-Prune stage 1; `scene` holds RS-Prune's reference-guided scene-aware sampling and the two-stage pipeline (arXiv
2512.23239); `captions` holds WFA's BLEU-based caption-uniqueness weights (arXiv 2505.11121) and caption-file loaders;
`io` reads embeddings and writes selections and plots. The kernels are pure JAX with thin numpy glue (plus sacrebleu
for captions and matplotlib for plots). This is the bottom floor: it never imports `oceansar` or `launch.py`;
`oceansar` imports it (the pruning policies, `--mode=curate`), never the reverse.
"""
