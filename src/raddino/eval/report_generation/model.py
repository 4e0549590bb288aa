"""The LLaVA-style report model: image tokens -> MLP projector -> causal LM, spliced into a prompt.

The prompt is text with one image placeholder (``<image>``). It is tokenized in two pieces (before
and after the placeholder) so any Hugging Face tokenizer works without new vocabulary; the
projected image tokens take the placeholder's place in the LM's input embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_PROMPT = "Image: <image>\nFindings:"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ReportModelConfig:
    """Sizes and prompt of a report model (saved in the run directory)."""

    encoder_dim: int
    lm_dim: int
    projector_hidden: int = 0  # 0 = lm_dim (LLaVA-1.5's 2-layer MLP)
    pool: int = 0  # pool the patch grid to pool x pool tokens; 0 = keep every patch
    prompt: str = DEFAULT_PROMPT
    max_target_tokens: int = 256

    def __post_init__(self) -> None:
        if self.prompt.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"prompt {self.prompt!r} must contain {IMAGE_PLACEHOLDER} once")
        if self.pool < 0:
            raise ValueError(f"pool={self.pool} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Projector(nn.Module):
    """Two linear layers with a GELU between: (B, M, encoder_dim) -> (B, M, lm_dim)."""

    def __init__(self, encoder_dim: int, lm_dim: int, hidden: int = 0) -> None:
        super().__init__()
        hidden = hidden or lm_dim
        self.fc1 = nn.Linear(encoder_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, lm_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


def pool_patch_grid(patches: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, D, h, w) patch grid -> (B, M, D) tokens; M = pool*pool (area pooling) or h*w if 0."""
    if pool and (pool, pool) != tuple(patches.shape[-2:]):
        patches = F.adaptive_avg_pool2d(patches, (pool, pool))
    return patches.flatten(2).transpose(1, 2)


class ReportModel(nn.Module):
    """Projector + causal LM + tokenizer; ``forward`` gives the loss on target reports.

    ``lm`` is any ``transformers`` causal LM (possibly wrapped by ``peft``); only the projector
    (and whatever the caller leaves trainable in the LM) receives gradients.
    """

    def __init__(self, config: ReportModelConfig, lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.projector = Projector(config.encoder_dim, config.lm_dim, config.projector_hidden)
        self.lm = lm
        self.tokenizer = tokenizer
        prefix, suffix = config.prompt.split(IMAGE_PLACEHOLDER)
        self.prefix_ids: list[int] = tokenizer(prefix, add_special_tokens=True)["input_ids"]
        self.suffix_ids: list[int] = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is None:
            raise ValueError("the language model's tokenizer has no end-of-sequence token")
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        )

    @property
    def image_position(self) -> int:
        """Index of the first image token in every input sequence."""
        return len(self.prefix_ids)

    def embed_ids(self, ids: list[int], device: torch.device) -> torch.Tensor:
        """Token ids -> (len(ids), lm_dim) input embeddings of the LM."""
        table = self.lm.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=device))

    def target_ids(self, texts: list[str]) -> list[list[int]]:
        """Tokenized reports, truncated to ``max_target_tokens``, each ending with EOS."""
        limit = self.config.max_target_tokens
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[*ids[: limit - 1], self.eos_id] for ids in encoded]

    def build_inputs(
        self, image_tokens: torch.Tensor, targets: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice projected image tokens into the prompt (+ optional targets).

        image_tokens: (B, M, encoder_dim). Returns ``inputs_embeds`` (B, L, lm_dim),
        ``attention_mask`` (B, L) and ``labels`` (B, L) with -100 outside the targets (None
        without targets). Sequences are right-padded for training, left-padded for generation.
        """
        device = image_tokens.device
        image = self.projector(image_tokens)  # (B, M, lm_dim)
        prefix = self.embed_ids(self.prefix_ids, device)
        suffix = self.embed_ids(self.suffix_ids, device)
        dtype = prefix.dtype
        image = image.to(dtype)
        batch, m = image.shape[:2]
        prompt_len = len(self.prefix_ids) + m + len(self.suffix_ids)
        if targets is None:
            embeds = torch.cat(
                [prefix.expand(batch, -1, -1), image, suffix.expand(batch, -1, -1)], dim=1
            )
            mask = torch.ones(batch, prompt_len, dtype=torch.long, device=device)
            return embeds, mask, None
        longest = max(len(t) for t in targets)
        length = prompt_len + longest
        pad = self.embed_ids([self.pad_id], device)[0]
        rows, masks, labels = [], [], []
        for b, ids in enumerate(targets):
            target = self.embed_ids(ids, device)
            padding = pad.expand(longest - len(ids), -1)
            rows.append(torch.cat([prefix, image[b], suffix, target, padding], dim=0))
            mask = torch.zeros(length, dtype=torch.long, device=device)
            mask[: prompt_len + len(ids)] = 1
            label = torch.full((length,), IGNORE_INDEX, dtype=torch.long, device=device)
            label[prompt_len : prompt_len + len(ids)] = torch.tensor(ids, device=device)
            masks.append(mask)
            labels.append(label)
        return torch.stack(rows), torch.stack(masks), torch.stack(labels)

    def forward(self, image_tokens: torch.Tensor, reports: list[str]) -> torch.Tensor:
        """Mean next-token cross-entropy of ``reports`` given the images (B, M, encoder_dim)."""
        embeds, mask, labels = self.build_inputs(image_tokens, self.target_ids(reports))
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits
        # position t predicts token t+1
        logits = logits[:, :-1].float()
        labels = labels[:, 1:]
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )

    @torch.no_grad()
    def generate(
        self, image_tokens: torch.Tensor, max_new_tokens: int = 128, num_beams: int = 1
    ) -> list[str]:
        """Reports for images (B, M, encoder_dim): greedy (``num_beams=1``) or beam search."""
        embeds, mask, _ = self.build_inputs(image_tokens)
        output = self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        # decoder-only models given inputs_embeds return only the new tokens
        return [
            text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)
        ]
