"""Networks in Flax NNX: the ViT and ResNet backbones and the DINO head.

`vit` holds the Vision Transformer backbone named by big_vision-style variant strings ("S/16", "B/8"), whose position
embeddings are resized to each crop's patch grid and which takes an optional iBOT patch mask; `resnet` the bottleneck
ResNet ("R50", timm's module names, batch norm with running statistics); `backbone` builds and describes either from
its variant string; `timm_layout` and `resnet_layout` map their weights to and from timm's; `dino_head` holds DINO's
projection head and `DINOModel`, the backbone + head that student and teacher each instantiate. Models know nothing
about crops, objectives or training: the package imports only flax, jax and numpy and no other part of `oceansar`.
Losses live in `oceansar.losses`, augmentation in `oceansar.augment`, and the teacher EMA and the freezing of the
prototype layer in `oceansar.train`.

For vision-language pretraining, `text` holds the CLIP-style text tower (`TextTransformer`, sized like the ViT,
causal + key-padding attention, pooled at the EOS token, projected to the joint space) and `aggregation` the weighted
feature aggregation of an image's redundant captions (WFA, arXiv 2505.11121: single, mean, BLEU-uniqueness or learned
attention weights) with the packing that lets the text tower encode each distinct caption of a batch once.
"""
