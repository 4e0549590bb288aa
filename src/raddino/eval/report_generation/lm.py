"""A small language model for CPU use: a BPE tokenizer trained on the reports + a tiny Llama.

``init_lm`` writes a Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``...) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load like any other, so
the report pipeline runs on the synthetic cohort without downloading a model. The weights are
random: train with ``--stage full`` (projector + whole LM) rather than the frozen-LM stages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class SmallLMConfig:
    """Sizes of the tokenizer and decoder (Llama architecture)."""

    vocab_size: int = 1000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 0  # 0 = 4 * hidden_size
    max_positions: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}"
            )
        if self.vocab_size < 64:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 64")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` that adds ``<s>`` in front of inputs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def init_lm(texts: Sequence[str], out_dir: str | Path, config: SmallLMConfig) -> Path:
    """Train a tokenizer on ``texts`` and save it with a random Llama decoder in ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("init-lm: the corpus has no report text (empty 'report' column?)")
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    lm_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size or 4 * config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(lm_config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "raddino_small_lm.json").write_text(
        json.dumps({"corpus_reports": len(texts), **asdict(config)}, indent=2)
    )
    return out


def load_lm(
    lm_dir: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(causal LM, tokenizer) from a local Hugging Face directory; nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(lm_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"language model {path}: no config.json (a Hugging Face directory)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model, tokenizer
