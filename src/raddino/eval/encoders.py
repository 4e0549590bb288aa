"""Which encoder to evaluate: weights on disk, or a random-initialised copy of their architecture.

A spec is written on the command line as ``PATH`` (a Hugging Face Dinov2 directory or an
official DINOv2 file), ``random:PATH`` (same architecture and preprocessing, random weights: the
baseline every learned encoder should beat), optionally prefixed by a display name
``NAME=PATH``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from raddino.models.encoder import RadDino

RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to evaluate; ``image_size`` overrides the resize and crop size (pixels)."""

    source: str
    random_init: bool = False
    seed: int = 0
    image_size: int | None = None
    name: str = ""

    @classmethod
    def parse(cls, text: str, image_size: int | None = None, seed: int = 0) -> EncoderSpec:
        """``[NAME=][random:]PATH`` -> spec."""
        name = ""
        head, sep, rest = text.partition("=")
        if sep and "/" not in head and not Path(text).exists():
            name, text = head, rest
        random_init = text.startswith(RANDOM_PREFIX)
        source = text.removeprefix(RANDOM_PREFIX)
        if not Path(source).exists():
            raise FileNotFoundError(f"encoder {source}: no such file or directory")
        return cls(source, random_init, seed, image_size, name)

    def as_random(self) -> EncoderSpec:
        """The random-initialised baseline of this encoder's architecture."""
        return replace(self, random_init=True, name="")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = Path(self.source).name or self.source
        return f"random-init({base})" if self.random_init else base

    def fingerprint(self) -> str:
        """What identifies the encoder's features: weights (path, sizes, times) and settings."""
        source = Path(self.source).resolve()
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        stats = []
        for file in files:
            if file.is_file():
                stat = file.stat()
                name = str(file.relative_to(source)) if source.is_dir() else file.name
                stats.append((name, stat.st_size, stat.st_mtime_ns))
        data = {
            "source": str(source),
            "files": stats,
            "random_init": self.random_init,
            "seed": self.seed if self.random_init else None,
            "image_size": self.image_size,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "label": self.label,
            "source": str(Path(self.source).resolve()),
            "random_init": self.random_init,
            "seed": self.seed if self.random_init else None,
            "image_size": self.image_size,
        }

    def load(self) -> RadDino:
        """The encoder on the CPU in float32, in eval mode."""
        model = RadDino.from_pretrained(self.source)
        if self.image_size is not None:
            size = self.image_size
            if size <= 0 or size % model.config.patch_size:
                raise ValueError(
                    f"--image-size {size}: must be a positive multiple of the patch size "
                    f"{model.config.patch_size}"
                )
            model.preprocess_config = replace(
                model.preprocess_config, shortest_edge=size, crop_height=size, crop_width=size
            )
        if self.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = RadDino.from_config(model.config, model.preprocess_config)
        return model.eval()
