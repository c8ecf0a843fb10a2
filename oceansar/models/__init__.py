"""Networks in Flax NNX: the ViT backbone and the DINO head.

`vit` holds the Vision Transformer backbone named by big_vision-style variant strings ("S/16", "B/8"), whose position
embeddings are resized to each crop's patch grid and which takes an optional iBOT patch mask; `dino_head` holds DINO's
projection head and `DINOModel`, the backbone + head that student and teacher each instantiate. Models know nothing
about crops, objectives or training: the package imports only flax, jax and numpy and no other part of `oceansar`.
Losses live in `oceansar.losses`, augmentation in `oceansar.augment`, and the teacher EMA and the freezing of the
prototype layer in `oceansar.train`.
"""
