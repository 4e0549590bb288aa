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

A view is made in three parts, so that a batch's elementwise work runs as a few batched ops:

1. :meth:`MultiCrop.draw`: every random number of the view (:class:`ViewDraw`), in this order:
   rotation angle (if ``rotation_degrees`` > 0), crop box, flip, gamma, contrast, brightness,
   blur (and its sigma when blurred), noise (``randn`` then its amplitude, if ``noise_std`` > 0).
2. :meth:`MultiCrop.cut`: the uint8 geometry of one view, rotation, resized crop and flip (each
   crop has its own box, so this stays per view).
3. :func:`finish_views`: the photometric part of many views of one size at once, (B, 1, S, S)
   uint8 -> (B, 3, S, S) float: gamma through a 256-entry table, per-view contrast and brightness
   around the view's mean, blur and noise for the views that drew them, clamp, normalisation.

The float32 operations are those of the per-view original (``x / 255``, ``pow``, ``(x - mean) *
c + mean + b``, ``clamp``, ``(x - mean) / std``), so the crops are its bits as a loader worker
(one thread) made them, with one exception, and they no longer depend on the thread count:

* Each view's mean is one row of a batched reduction, which torch does not split between
  threads; the original's single-crop mean over more than 32,768 pixels (crops of 182 px and
  more) was split on several threads, and rounded differently in the main process.
* The exception: gamma comes from a table computed with torch's vectorised ``pow``; the
  original raised the last pixels of a crop whose pixel count is not a multiple of twice the
  SIMD width (98 x 98, not 112 x 112 or 48 x 48) with the scalar ``pow``, 1 float32 ulp apart
  (``tests/ssl/test_augment.py`` bounds the difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from raddino.data.preprocess import PreprocessConfig
from raddino.ssl.config import CropSection

LEVELS = torch.arange(256, dtype=torch.float32) / 255.0  # uint8 grey level -> [0, 1]
MEAN, STD = PreprocessConfig().image_mean[0], PreprocessConfig().image_std[0]


@dataclass
class Crops:
    """One image's views, normalised float (3, S, S): ``globals_`` (2), ``locals_`` (N)."""

    globals_: list[torch.Tensor]
    locals_: list[torch.Tensor]


@dataclass(frozen=True)
class ViewDraw:
    """The random numbers of one view (see the module docstring for their order)."""

    size: int
    angle: float | None  # degrees, None without rotation
    box: tuple[int, int, int, int]  # top, left, height, width
    flip: bool
    gamma: float
    contrast: float
    brightness: float
    blur_sigma: float | None  # None: not blurred
    noise: torch.Tensor | None  # (1, size, size) float32, scaled by its amplitude


@dataclass
class Cuts:
    """One image's views before their photometric part: uint8 (1, S, S) and their draws."""

    globals_: list[torch.Tensor]
    locals_: list[torch.Tensor]
    global_draws: list[ViewDraw]
    local_draws: list[ViewDraw]


def between(low: float, high: float, u: float) -> float:
    """``u`` in [0, 1) mapped to [low, high)."""
    return low + (high - low) * u


def uniform(rng: torch.Generator, low: float, high: float) -> float:
    return between(low, high, torch.rand((), generator=rng).item())


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ``scale`` of the area, aspect in [3/4, 4/3]."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u_scale, u_ratio = torch.rand(2, generator=rng).tolist()  # = two draws of uniform()
        target = area * between(*scale, u_scale)
        aspect = math.exp(between(*log_ratio, u_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=rng))
            left = int(torch.randint(0, width - w + 1, (), generator=rng))
            return top, left, h, w
    side = min(height, width)  # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


class MultiCrop:
    """Callable: uint8 grey image (1, H, W) -> :class:`Crops`; or in parts: :meth:`cuts` per
    image, :meth:`finish` per batch of views of one size."""

    def __init__(self, config: CropSection, normalisation: PreprocessConfig | None = None) -> None:
        self.config = config
        norm = normalisation or PreprocessConfig()
        self.mean, self.std = norm.image_mean[0], norm.image_std[0]

    def draw(
        self, height: int, width: int, size: int, scale: tuple[float, float], rng: torch.Generator
    ) -> ViewDraw:
        """The random numbers of one ``size`` view of an (H, W) image."""
        cfg = self.config
        angle = None
        if cfg.rotation_degrees > 0:
            angle = uniform(rng, -cfg.rotation_degrees, cfg.rotation_degrees)
        box = random_resized_crop_box(height, width, scale, rng)  # rotation keeps (H, W)
        # flip, gamma, contrast, brightness, blur: one call, the draws of five in turn
        u_flip, u_gamma, u_contrast, u_brightness, u_blur = torch.rand(5, generator=rng).tolist()
        flip = u_flip < cfg.flip_probability
        gamma = math.exp(between(math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), u_gamma))
        contrast = 1 + between(-cfg.contrast, cfg.contrast, u_contrast)
        brightness = between(-cfg.brightness, cfg.brightness, u_brightness) * 0.5
        sigma = None
        if u_blur < cfg.blur_probability:
            sigma = uniform(rng, *cfg.blur_sigma)
        noise = None
        if cfg.noise_std > 0:
            noise = torch.randn((1, size, size), generator=rng) * uniform(rng, 0.0, cfg.noise_std)
        return ViewDraw(size, angle, box, flip, gamma, contrast, brightness, sigma, noise)

    def cut(self, image: torch.Tensor, draw: ViewDraw) -> torch.Tensor:
        """The view's geometry: uint8 (1, H, W) -> uint8 (1, S, S), rotated, cropped, flipped."""
        if draw.angle is not None:
            image = TF.rotate(image, draw.angle, InterpolationMode.BILINEAR)
        top, left, h, w = draw.box
        crop = image[..., top : top + h, left : left + w]
        if (h, w) != (draw.size, draw.size):  # torchvision's resized_crop without its dispatch
            crop = F.interpolate(crop[None], size=[draw.size] * 2, mode="bicubic",
                                 align_corners=False, antialias=True)[0]  # fmt: skip
        return crop.flip(-1) if draw.flip else crop

    def cuts(self, image: torch.Tensor, rng: torch.Generator, global_size: int) -> Cuts:
        """Draws and geometry of 2 global and ``local_number`` local views of one image."""
        cfg = self.config
        height, width = image.shape[-2:]
        global_draws = [
            self.draw(height, width, global_size, cfg.global_scale, rng) for _ in range(2)
        ]
        local_draws = [
            self.draw(height, width, cfg.local_size, cfg.local_scale, rng)
            for _ in range(cfg.local_number)
        ]
        return Cuts(
            [self.cut(image, d) for d in global_draws],
            [self.cut(image, d) for d in local_draws],
            global_draws,
            local_draws,
        )

    def finish(self, cuts: torch.Tensor, draws: list[ViewDraw]) -> torch.Tensor:
        """:func:`finish_views` with this multi-crop's normalisation."""
        return finish_views(cuts, draws, self.mean, self.std)

    def view(
        self, image: torch.Tensor, size: int, scale: tuple[float, float], rng: torch.Generator
    ) -> torch.Tensor:
        """One augmented view (3, size, size), normalised like RAD-DINO's processor."""
        draw = self.draw(image.shape[-2], image.shape[-1], size, scale, rng)
        return self.finish(self.cut(image, draw)[None], [draw])[0]

    def __call__(self, image: torch.Tensor, rng: torch.Generator, global_size: int) -> Crops:
        cuts = self.cuts(image, rng, global_size)
        globals_ = self.finish(torch.stack(cuts.globals_), cuts.global_draws)
        locals_ = self.finish(torch.stack(cuts.locals_), cuts.local_draws) if cuts.locals_ else []
        return Crops(list(globals_), list(locals_))


def finish_views(
    cuts: torch.Tensor, draws: list[ViewDraw], mean: float = MEAN, std: float = STD
) -> torch.Tensor:
    """The photometric part of B views of one size: uint8 (B, 1, S, S) -> normalised float
    (B, 3, S, S), ``(x - mean) / std`` as RAD-DINO's processor; ``draws[i]`` is view i's."""
    n, size = len(draws), cuts.shape[-1]
    flat = cuts.reshape(n, size * size)
    gammas = sorted({d.gamma for d in draws})
    if gammas == [1.0]:  # pow(1) is a copy: the table would be LEVELS itself
        x = flat.float() / 255.0
    else:  # each view's levels through its gamma's table (int32 indices: half the memory)
        tables = torch.stack([LEVELS.clamp_min(0).pow(g) for g in gammas]).flatten()
        row = torch.tensor([256 * gammas.index(d.gamma) for d in draws], dtype=torch.int32)
        x = tables.index_select(0, (flat.int() + row[:, None]).flatten()).view(n, -1)
    # each view's mean alone (the copy for n = 1 keeps it off the multi-threaded full sum)
    centre = (x if n > 1 else torch.cat([x, x])).mean(1, keepdim=True)[:n]
    contrast = torch.tensor([d.contrast for d in draws], dtype=torch.float32)[:, None]
    brightness = torch.tensor([d.brightness for d in draws], dtype=torch.float32)[:, None]
    x.sub_(centre).mul_(contrast).add_(centre).add_(brightness)  # in place: the same bits
    for i, d in enumerate(draws):
        if d.blur_sigma is not None:
            kernel = 2 * math.ceil(3 * d.blur_sigma) + 1
            view = x[i].view(1, size, size)
            x[i] = TF.gaussian_blur(view, [kernel, kernel], [d.blur_sigma] * 2).flatten()
        if d.noise is not None:
            x[i] += d.noise.flatten()
    x.clamp_(0, 1).sub_(mean).div_(std)
    return x.view(n, 1, size, size).expand(n, 3, size, size).contiguous()
