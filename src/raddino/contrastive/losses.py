"""Image-report objectives: CLIP's symmetric InfoNCE (the default) and SigLIP's sigmoid loss.

**Why CLIP's loss is the default, at a CPU batch of 32.** SigLIP's paper (Zhai et al., ICCV
2023, Sec. 4) finds its pairwise sigmoid loss ahead of CLIP's softmax at small batch sizes,
which argued for it here. Two properties of our setting, seen on the synthetic cohort, and the
paper's baseline argue the other way
(``docs/experiments/2026-12-05-language-supervised-preset.md``):

* **t and b do not move in a short run.** Adam changes a scalar by about the learning rate per
  step: 800 steps at the preset's 3.5e-4 move t and b by less than 0.3. With SigLIP's published
  start (t = 10, b = -10) every logit ``t cos + b`` stays at or below 0, so positives are never
  confident, and a negative pair below cosine 0.5 has a gradient weight under 0.007. Nothing
  pushes embeddings apart: on the cohort (seed 1, 300 steps) SigLIP settled where every image
  and every report has the same embedding (loss 4.42, the value of that solution for 32 pairs;
  in-batch retrieval at chance). The paper's runs are tens of thousands of steps long, long
  enough for t and b to adapt; ours are not.
* **The reports repeat.** A report is a function of the findings: a quarter of the cohort is
  normal, so a batch of 32 holds about 8 reports that say the same thing. SigLIP labels each
  such pair a negative with the full weight of a binary error; the softmax lets equal
  candidates share a row's probability, which only caps the loss (at ln 8 for those rows).
* **It is the paper's baseline.** BiomedCLIP, the main language-supervised encoder the paper
  compares against, is trained with CLIP's loss.

SigLIP (``contrastive.objective=siglip``) remains for longer runs. With either, the shares of
the processes need only an all-gather of embeddings with gradients (:mod:`raddino.ssl.
distributed`), and nothing is normalised over a process's own rows alone.

**One process's share.** Both functions return the part of the global batch's loss that falls
on this process's ``b`` pairs: rows ``offset .. offset + b`` of the global batch of ``B``. Summed
over processes, the shares are the loss one process computes on the whole batch (tested with
explicit float64 loops and with 2 gloo processes). Embeddings are L2-normalised, (n, E); the
logits are computed in float32 whatever the autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def siglip_loss(
    image: torch.Tensor,
    texts: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    offset: int = 0,
) -> torch.Tensor:
    """SigLIP (Zhai et al. 2023, Algorithm 1):
    ``-1/B sum_i sum_j log sigmoid(z_ij (t <x_i, y_j> + b))``, ``z_ij = 1`` for an image and
    its own report, -1 for every other pair.

    image: (b, E) this process's images; texts: (B, E) every report of the global batch;
    logit_scale: t (a scalar, not its log); logit_bias: b; offset: the global index of ``image[0]``.
    """
    logits = logit_scale * image.float() @ texts.float().T + logit_bias  # (b, B)
    rows = torch.arange(image.shape[0], device=image.device)
    signs = torch.full_like(logits, -1.0)
    signs[rows, offset + rows] = 1.0
    return -F.logsigmoid(signs * logits).sum() / texts.shape[0]


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    images: torch.Tensor,
    texts: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int = 0,
) -> torch.Tensor:
    """CLIP (Radford et al. 2021): the mean of the image-to-report and report-to-image
    cross-entropies over the global batch, logits ``t <x_i, y_j>``.

    image, text: (b, E) this process's pairs; images, texts: (B, E) the global batch's.
    """
    targets = offset + torch.arange(image.shape[0], device=image.device)
    to_text = logit_scale * image.float() @ texts.float().T  # (b, B)
    to_image = logit_scale * text.float() @ images.float().T
    loss = F.cross_entropy(to_text, targets, reduction="sum")
    loss = loss + F.cross_entropy(to_image, targets, reduction="sum")
    return loss / (2 * texts.shape[0])


@torch.no_grad()
def retrieval_accuracy(
    image: torch.Tensor,
    text: torch.Tensor,
    images: torch.Tensor,
    texts: torch.Tensor,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch top-1 retrieval of this process's pairs among the global batch (B candidates;
    chance 1/B): image -> its report, report -> its image, as fractions of the b pairs."""
    targets = offset + torch.arange(image.shape[0], device=image.device)
    to_text = (image.float() @ texts.float().T).argmax(dim=1) == targets
    to_image = (text.float() @ images.float().T).argmax(dim=1) == targets
    return to_text.float().mean(), to_image.float().mean()
