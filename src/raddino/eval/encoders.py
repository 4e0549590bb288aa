"""Which encoder to evaluate: weights on disk, a random-initialised copy of their architecture,
or raw pixels.

A spec is written on the command line as ``PATH`` (a Hugging Face Dinov2 directory, an
official DINOv2 file, a raddino run, or a CLIP, SigLIP or timm encoder:
:mod:`raddino.models.adapters`; also ``timm:MODEL_NAME:PATH``), ``random:PATH`` (same
architecture and preprocessing, random weights: the baseline every learned encoder should
beat) or ``pixels:SIDE`` (the image's SIDE x SIDE grey thumbnail, :mod:`raddino.eval.pixels`:
what a probe gets without any encoder), optionally prefixed by a display name ``NAME=...``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from raddino.data.preprocess import PreprocessConfig
from raddino.eval.pixels import PIXELS_PREFIX, PixelEncoder, parse_side, pixel_encoder
from raddino.models import adapters
from raddino.models.encoder import RadDino
from raddino.models.vit import ViTConfig

RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to evaluate; ``image_size`` overrides the resize and crop size (pixels).

    ``pixels`` > 0: the raw-pixel baseline with SIDE x SIDE thumbnails; its ``source`` is the
    encoder whose processor (resize, crop) and patch grid it takes, "" for RAD-DINO's.
    """

    source: str
    random_init: bool = False
    seed: int = 0
    image_size: int | None = None
    name: str = ""
    pixels: int = 0

    @classmethod
    def parse(cls, text: str, image_size: int | None = None, seed: int = 0) -> EncoderSpec:
        """``[NAME=][random:]PATH`` or ``[NAME=]pixels:SIDE`` -> spec."""
        name = ""
        head, sep, rest = text.partition("=")
        if sep and "/" not in head and not Path(text).exists():
            name, text = head, rest
        if text.startswith(PIXELS_PREFIX) and not Path(text).exists():
            side = parse_side(text.removeprefix(PIXELS_PREFIX), f"encoder {text}")
            return cls("", False, seed, image_size, name, pixels=side)
        random_init = text.startswith(RANDOM_PREFIX)
        source = text.removeprefix(RANDOM_PREFIX)
        if not Path(adapters.weights_path(source)).exists():
            raise FileNotFoundError(f"encoder {source}: no such file or directory")
        return cls(source, random_init, seed, image_size, name)

    def as_random(self) -> EncoderSpec:
        """The random-initialised baseline of this encoder's architecture."""
        if self.pixels:
            raise ValueError(
                f"{self.label}: raw pixels have no architecture to initialise at random; "
                "put an encoder first for the random baseline"
            )
        return replace(self, random_init=True, name="")

    def as_pixels(self, side: int) -> EncoderSpec:
        """The raw-pixel baseline at this encoder's resize, crop and patch grid."""
        side = parse_side(side, "pixel baseline")
        return replace(self, random_init=False, name="", pixels=side)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.pixels:
            return f"pixels {self.pixels}x{self.pixels}"
        base = Path(adapters.weights_path(self.source)).name or self.source
        return f"random-init({base})" if self.random_init else base

    def fingerprint(self) -> str:
        """What identifies the encoder's features: weights (path, sizes, times) and settings;
        for the pixel baseline, its side, recipe, processor and patch size."""
        if self.pixels:
            encoder = self.load()
            data = {
                "pixels": encoder.config.to_dict(),
                "preprocess": encoder.preprocess_config.to_dict(),
            }
        else:
            data = {
                "source": adapters.resolve_source(self.source),
                "files": _weight_files(self.source),
                "random_init": self.random_init,
                "seed": self.seed if self.random_init else None,
                "image_size": self.image_size,
            }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        source = adapters.resolve_source(self.source) if self.source else ""
        if self.pixels:
            side = self.pixels
            processor = source or "RAD-DINO's processor"
            source = f"raw pixels: {side}x{side} grey thumbnail (resize, crop and patch grid of "
            source += f"{processor}; no encoder)"
        return {
            "label": self.label,
            "source": source,
            "random_init": self.random_init,
            "seed": self.seed if self.random_init else None,
            "image_size": self.image_size,
            "pixels": self.pixels or None,
        }

    def load(self) -> RadDino | PixelEncoder:
        """The encoder on the CPU in float32, in eval mode (:class:`PixelEncoder` for raw
        pixels)."""
        if self.pixels:
            return self.pixel_encoder()
        model = RadDino.from_pretrained(self.source)
        model.preprocess_config = self._sized(model.preprocess_config, model.config.patch_size)
        if self.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = RadDino.from_config(model.config, model.preprocess_config)
        return model.eval()

    def pixel_encoder(self, what: str | None = None) -> PixelEncoder:
        """The raw-pixel baseline of this spec; ``what`` names it in errors (e.g. the option
        that asked for it), ``encoder pixels:SIDE`` by default."""
        if not self.pixels:
            raise ValueError(f"encoder {self.label} is not the pixel baseline")
        if self.source:
            patch_size, preprocess = _processor_of(self.source)
        else:
            patch_size, preprocess = ViTConfig().patch_size, PreprocessConfig()
        preprocess = self._sized(preprocess, patch_size)
        what = what or f"encoder {PIXELS_PREFIX}{self.pixels}"
        return pixel_encoder(self.pixels, patch_size, preprocess, what)

    def _sized(self, preprocess: PreprocessConfig, patch_size: int) -> PreprocessConfig:
        """The processor resized and cropped at ``image_size`` (when given); an exact-size
        resize (SigLIP's) becomes image_size x image_size too."""
        if self.image_size is None:
            return preprocess
        size = self.image_size
        if size <= 0 or size % patch_size:
            raise ValueError(
                f"--image-size {size}: must be a positive multiple of the patch size {patch_size}"
            )
        resize = None if preprocess.resize_size is None else (size, size)
        return replace(
            preprocess, shortest_edge=size, crop_height=size, crop_width=size, resize_size=resize
        )


def borrow_preprocessing(specs: Sequence[EncoderSpec]) -> list[EncoderSpec]:
    """Pixel baselines written without an encoder (``pixels:SIDE``) take the resize, crop and
    patch grid of the first encoder in ``specs``, so every row sees the same crops."""
    reference = next((spec for spec in specs if not spec.pixels), None)
    if reference is None:
        return list(specs)
    return [
        replace(spec, source=reference.source) if spec.pixels and not spec.source else spec
        for spec in specs
    ]


def _weight_files(source: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the weight files: what tells one set of weights from another."""
    root = Path(adapters.weights_path(source)).resolve()
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    stats = []
    for file in files:
        if file.is_file():
            stat = file.stat()
            name = str(file.relative_to(root)) if root.is_dir() else file.name
            stats.append((name, stat.st_size, stat.st_mtime_ns))
    return stats


def _processor_of(source: str) -> tuple[int, PreprocessConfig]:
    """(patch size, processor) of the encoder at ``source``, read once per version of its files
    (the weights are loaded to read them, then dropped)."""
    return _read_processor(adapters.resolve_source(source), tuple(_weight_files(source)))


@functools.lru_cache(maxsize=8)
def _read_processor(source: str, files: tuple) -> tuple[int, PreprocessConfig]:
    model = RadDino.from_pretrained(source)
    return model.config.patch_size, model.preprocess_config
