"""The two towers of the language-supervised recipe and their shared embedding space.

* **Image tower** ``vision``: the image-only recipe's ViT
  (:class:`raddino.models.vit.VisionTransformer`, built from the same ``model`` section); its
  embedding is the CLS token after the final norm. This is what ``raddino export`` writes. Built
  first from the run's seed, it starts from the very weights the image-only recipe's student
  starts from, so both recipes share one random-encoder baseline.
* **Text tower** ``text``: a BERT encoder built by ``transformers`` from ``text.*`` (random
  weights, nothing downloaded; no segment embedding, no pooler); the report's embedding is the
  mean of its tokens' final states (``text.pooling=mean``, the default: see
  :class:`~raddino.contrastive.config.TextSection`) or its ``[CLS]`` token's (``cls``).
* **Shared space**: one linear map (no bias) per tower into ``contrastive.embed_dim``, then L2
  normalisation; the learned logit scale ``t`` (kept as ``log t``, as CLIP and SigLIP do) and,
  for SigLIP, the learned bias ``b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raddino.contrastive.config import ContrastiveSection, TextSection
from raddino.models.vit import VisionTransformer, ViTConfig


def bert_config(text: TextSection, vocab_size: int, pad_id: int):
    """The ``transformers.BertConfig`` of the text tower."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=text.width,
        num_hidden_layers=text.depth,
        num_attention_heads=text.num_heads,
        intermediate_size=text.mlp_dim,
        max_position_embeddings=text.max_length,
        type_vocab_size=1,
        hidden_dropout_prob=text.dropout,
        attention_probs_dropout_prob=text.dropout,
        pad_token_id=pad_id,
    )


class TextTower(nn.Module):
    """Token ids (B, L) and attention mask (B, L) -> report features (B, text.width)."""

    def __init__(self, text: TextSection, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        from transformers import BertModel

        self.pooling = text.pooling
        self.encoder = BertModel(bert_config(text, vocab_size, pad_id), add_pooling_layer=False)
        # One segment type makes BERT's token-type embedding one vector added to every token:
        # at init a third of each token's input, the same in every report (mean-pooled reports
        # then start at cosine 0.98 to each other, 0.74 without it). Zero and frozen, as if
        # BERT had no segments.
        segment = self.encoder.embeddings.token_type_embeddings.weight
        segment.data.zero_()
        segment.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


@dataclass
class PairEmbeddings:
    """One forward pass: normalised embeddings (b, E) in float32, the logit scale t and the
    bias b (None for CLIP)."""

    image: torch.Tensor
    text: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None


class ImageTextModel(nn.Module):
    """``vision`` + ``text`` towers, their projections, logit scale and bias."""

    def __init__(
        self,
        vision: ViTConfig,
        text: TextSection,
        contrastive: ContrastiveSection,
        vocab_size: int,
        pad_id: int,
    ) -> None:
        super().__init__()
        self.vision = VisionTransformer(vision)
        # the mask token is for masked image modelling: kept (the exported backbone has it) but
        # frozen, as no gradient ever reaches it here (DDP requires every trained one to get one)
        self.vision.mask_token.requires_grad_(False)
        self.text = TextTower(text, vocab_size, pad_id)
        self.vision_proj = nn.Linear(vision.embed_dim, contrastive.embed_dim, bias=False)
        self.text_proj = nn.Linear(text.width, contrastive.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(contrastive.initial_logit_scale())))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(contrastive.logit_bias_init)))
            if contrastive.objective == "siglip"
            else None
        )
        self.max_logit_scale = contrastive.max_logit_scale

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> PairEmbeddings:
        """images (b, 3, S, S) normalised pixels; input_ids, attention_mask (b, L)."""
        image = self.vision_proj(self.vision(images).cls)
        text = self.text_proj(self.text(input_ids, attention_mask))
        return PairEmbeddings(
            image=F.normalize(image.float(), dim=-1),
            text=F.normalize(text.float(), dim=-1),
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep t <= ``contrastive.max_logit_scale`` (CLIP clamps at 100 after each step)."""
        self.logit_scale.clamp_(max=math.log(self.max_logit_scale))
