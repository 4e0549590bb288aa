"""Self-supervised pre-training pieces of the DINOv2 recipe: losses, centering and masking.

:mod:`raddino.ssl.losses` holds the DINO, iBOT and KoLeo losses and the teacher centerings
(softmax centering with an explicit, checkpointable centre; Sinkhorn-Knopp);
:mod:`raddino.ssl.masking` holds DINOv2's block-wise patch masking and its collate semantics.
"""
