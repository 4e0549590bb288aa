"""Multi-crop augmentation for radiographs: 2 global + N local crops of one grey image.

Why these choices (DINOv2 was designed for colour photographs):

* Random resized crops (bicubic, antialiased) at DINOv2's scales: the core of multi-crop.
* No colour jitter, grey-scale conversion or solarisation: radiographs are grey and their
  intensities mean tissue density; inverting bright/dark (solarisation) makes no anatomy.
* Mild brightness, contrast and gamma changes: exposure and detector response vary by scanner.
* Occasional Gaussian blur and additive noise: detector sharpness and quantum noise vary.
  These two kinds are off in ``presets/tiny_cpu.yaml``: the synthetic cohort already varies
  exposure, blur, window and gamma between patients, and findings are differences of density,
  which the extra invariance taught the encoder to ignore
  (``docs/experiments/2026-11-cpu-preset-rounds.md``).
* Optional small rotations (``crops.rotation_degrees``), drawn for each view on its own, the
  uncovered corners black: patient positioning varies. Off in the presets (no measured gain on
  the synthetic cohort, ``docs/experiments/2026-11-cpu-preset-rounds.md``).
* No horizontal flip by default: it moves the heart to the right (dextrocardia is rare and a
  finding); enable ``crops.flip_probability`` for data where laterality does not matter.

All randomness comes from the ``torch.Generator`` passed in, so a sample's crops depend only on
its seed (exact resume and identical data across process counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from raddino.data.preprocess import PreprocessConfig
from raddino.ssl.config import CropSection


@dataclass
class Crops:
    """One image's views, normalised float (3, S, S): ``globals_`` (2), ``locals_`` (N)."""

    globals_: list[torch.Tensor]
    locals_: list[torch.Tensor]


def uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng).item()


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ``scale`` of the area, aspect in [3/4, 4/3]."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * uniform(rng, *scale)
        aspect = math.exp(uniform(rng, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=rng))
            left = int(torch.randint(0, width - w + 1, (), generator=rng))
            return top, left, h, w
    side = min(height, width)  # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


class MultiCrop:
    """Callable: uint8 grey image (1, H, W) -> :class:`Crops`."""

    def __init__(self, config: CropSection, normalisation: PreprocessConfig | None = None) -> None:
        self.config = config
        norm = normalisation or PreprocessConfig()
        self.mean = norm.image_mean[0]
        self.std = norm.image_std[0]

    def view(
        self, image: torch.Tensor, size: int, scale: tuple[float, float], rng: torch.Generator
    ) -> torch.Tensor:
        """One augmented view (3, size, size), normalised like RAD-DINO's processor."""
        cfg = self.config
        if cfg.rotation_degrees > 0:
            angle = uniform(rng, -cfg.rotation_degrees, cfg.rotation_degrees)
            image = TF.rotate(image, angle, InterpolationMode.BILINEAR)
        top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], scale, rng)
        crop = TF.resized_crop(
            image, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True
        )
        x = crop.float() / 255.0
        if torch.rand((), generator=rng).item() < cfg.flip_probability:
            x = x.flip(-1)
        gamma = math.exp(uniform(rng, math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        x = x.clamp_min(0).pow(gamma)
        contrast = 1 + uniform(rng, -cfg.contrast, cfg.contrast)
        brightness = uniform(rng, -cfg.brightness, cfg.brightness) * 0.5
        x = (x - x.mean()) * contrast + x.mean() + brightness
        if torch.rand((), generator=rng).item() < cfg.blur_probability:
            sigma = uniform(rng, *cfg.blur_sigma)
            kernel = 2 * math.ceil(3 * sigma) + 1
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if cfg.noise_std > 0:
            noise = torch.randn(x.shape, generator=rng) * uniform(rng, 0.0, cfg.noise_std)
            x = x + noise
        x = ((x.clamp(0, 1) - self.mean) / self.std).expand(3, -1, -1)
        return x.contiguous()

    def __call__(self, image: torch.Tensor, rng: torch.Generator, global_size: int) -> Crops:
        cfg = self.config
        globals_ = [self.view(image, global_size, cfg.global_scale, rng) for _ in range(2)]
        locals_ = [
            self.view(image, cfg.local_size, cfg.local_scale, rng) for _ in range(cfg.local_number)
        ]
        return Crops(globals_, locals_)
