"""RadDino: the RAD-DINO image processor and ViT backbone behind one object.

API-compatible with the official ``rad-dino`` package (``extract_features``,
``extract_cls_token``, ``extract_patch_tokens``, ``preprocess``) and loadable from every weight
format we know (:meth:`RadDino.from_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from raddino.data.io import pil_to_array, to_uint8
from raddino.data.preprocess import (
    PreprocessConfig,
    array_to_chw_uint8,
    model_input,
    read_uint8,
    resize_and_crop,
)
from raddino.models import adapters, formats
from raddino.models.adapters import AdapterConfig, ForeignBackbone
from raddino.models.vit import BackboneOutput, VisionTransformer, ViTConfig

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def to_uint8_chw(image: ImageLike) -> torch.Tensor:
    """Any supported image -> uint8 (C, H, W), C in {1, 3}.

    Paths are decoded with :func:`raddino.data.preprocess.read_uint8`. uint8 arrays and tensors
    are taken as pixel values; other dtypes are min-max scaled to [0, 255] (the model card's
    recipe). Tensors may be (H, W), (1, H, W) or (3, H, W); arrays (H, W) or (H, W, 3).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_uint8(image)
    if isinstance(image, Image.Image):
        return array_to_chw_uint8(to_uint8(pil_to_array(image), source="<PIL image>"))
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        return array_to_chw_uint8(to_uint8(image))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise ValueError(
                f"image tensors must be (H, W) or (1|3, H, W), got {tuple(image.shape)}"
            )
        if tensor.dtype != torch.uint8:
            array = tensor.permute(1, 2, 0).numpy()
            if array.shape[2] == 1:
                array = array[..., 0]
            return array_to_chw_uint8(to_uint8(array))
        return tensor.contiguous()
    raise TypeError(f"unsupported image type {type(image).__name__}")


class RadDino(nn.Module):
    """A RAD-DINO encoder: ``preprocess`` then a DINOv2 ViT (or a foreign encoder's backbone:
    CLIP, SigLIP, timm; :mod:`raddino.models.adapters`).

    Outputs: CLS embedding (B, D) and a patch-token grid (B, D, h, w), 37 x 37 at 518 px.
    """

    def __init__(
        self,
        backbone: VisionTransformer | ForeignBackbone,
        preprocess_config: PreprocessConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.preprocess_config = preprocess_config or PreprocessConfig()
        self.eval()

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def from_config(
        cls, config: ViTConfig | AdapterConfig, preprocess_config: PreprocessConfig | None = None
    ) -> RadDino:
        """A randomly initialised encoder (of a foreign architecture for an ``AdapterConfig``)."""
        if isinstance(config, AdapterConfig):
            return cls(adapters.build_backbone(config), preprocess_config)
        return cls(VisionTransformer(config), preprocess_config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        preprocess_config: PreprocessConfig | None = None,
    ) -> RadDino:
        """Load a Hugging Face Dinov2 directory, an official DINOv2 state dict or a raddino run
        directory (its latest checkpoint's teacher backbone; a contrastive run's image tower);
        or a foreign encoder: a transformers CLIP or SigLIP folder, a timm folder or
        ``timm:MODEL_NAME:PATH`` (:mod:`raddino.models.adapters`, with that model's processor).

        The preprocessing, unless ``preprocess_config`` is given: an HF directory's
        ``preprocessor_config.json``; an official file's sidecar (``NAME.json``, written by
        :meth:`export`), else RAD-DINO's processor at the file's own size (its ``pos_embed``
        grid times the patch size: 518 px for RAD-DINO); a run's final global-crop size.
        """
        if adapters.adapter_family(path) is not None:
            backbone, stored = adapters.load_adapter(path)
            return cls(backbone, preprocess_config or stored).to(device)
        path = Path(path)
        kind = formats.detect_format(path)
        if kind == "hf":
            config, state, stored = formats.load_hf_directory(path)
        elif kind == "run":
            config, state, stored = formats.load_run_directory(path)
        else:
            config, state, stored = formats.load_dinov2_file(path)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        with torch.device("meta"):
            backbone = VisionTransformer(config)
        backbone.load_state_dict(state, strict=True, assign=True)
        model = cls(backbone, preprocess_config or stored)
        return model.to(device)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the Hugging Face format (loadable by ``transformers.AutoModel``)."""
        self._require_own_vit("save_pretrained")
        directory = Path(directory)
        formats.save_hf_directory(
            self.backbone.state_dict(), self.config, self.preprocess_config, directory
        )
        return directory

    def export(self, path: str | os.PathLike, format: str = "hf") -> Path:
        """``format='hf'``: a directory; ``format='dinov2'``: an official .safetensors/.pth file
        with its sidecar ``NAME.json`` (architecture, preprocessing). ``raddino export``
        (:func:`raddino.models.export.export_model`) also writes a model card."""
        path = Path(path)
        self._require_own_vit("export")
        if format == "hf":
            return self.save_pretrained(path)
        if format == "dinov2":
            formats.save_dinov2_file(
                self.backbone.state_dict(), path, self.config, self.preprocess_config
            )
            return path
        raise ValueError(f"unknown export format {format!r}; use 'hf' or 'dinov2'")

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> ViTConfig | AdapterConfig:
        return self.backbone.config

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())

    def _require_own_vit(self, what: str) -> None:
        if isinstance(self.backbone, ForeignBackbone):
            raise ValueError(
                f"{what} writes DINOv2 ViTs only; this is a {self.config.family} encoder "
                f"({self.config.architecture}): use its own folder or file"
            )

    # ------------------------------------------------------------------ preprocessing

    def preprocess_uint8(self, image: ImageLike) -> torch.Tensor:
        """One image -> resized, cropped uint8 (C, H, W) on the CPU."""
        return resize_and_crop(to_uint8_chw(image), self.preprocess_config)

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> pixel values (B, 3, H, W) float32 on the model's device."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        crops = [self.preprocess_uint8(image) for image in images]
        return model_input(crops, self.preprocess_config, self.device)

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        pixel_values: torch.Tensor,
        masks: torch.Tensor | None = None,
        layers: Sequence[int] = (),
    ) -> BackboneOutput:
        """Gradient-enabled forward pass of preprocessed pixels (B, 3, H, W)."""
        return self.backbone(pixel_values.to(self.device, self.dtype), masks=masks, layers=layers)

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        return self.encode(pixel_values)

    @torch.inference_mode()
    def extract_features(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (CLS (B, D), patch tokens (B, D, h, w)), as the official rad-dino package."""
        output = self.encode(self.preprocess(images))
        return output.cls, output.patch_grid()

    def extract_cls_token(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> CLS embeddings (B, D)."""
        return self.extract_features(images)[0]

    def extract_patch_tokens(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> patch tokens (B, D, h, w)."""
        return self.extract_features(images)[1]
