"""Language-supervised pre-training: the image tower trained against radiology reports.

The recipe beside :mod:`raddino.ssl` (``recipe: contrastive`` in a preset): the same ViT, the
same images and the same run machinery, with SigLIP's sigmoid loss (or CLIP's InfoNCE) on
(image, report) pairs in place of DINO + iBOT + KoLeo, so that the paper's comparison can be
made: :mod:`~raddino.contrastive.config`, :mod:`~raddino.contrastive.tokenizer`,
:mod:`~raddino.contrastive.model`, :mod:`~raddino.contrastive.losses`,
:mod:`~raddino.contrastive.data`, :mod:`~raddino.contrastive.trainer`.
"""
