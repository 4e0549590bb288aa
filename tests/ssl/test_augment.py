"""Radiograph multi-crop: sizes, normalisation, no flips unless asked, optional rotations."""

from __future__ import annotations

import torch

from raddino.ssl.augment import MultiCrop, random_resized_crop_box
from raddino.ssl.config import CropSection


def half_bright_image() -> torch.Tensor:
    image = torch.zeros(1, 120, 100, dtype=torch.uint8)
    image[..., :50] = 220  # bright patient-right side (image left)
    return image


def test_views_have_the_configured_sizes_and_three_equal_channels():
    crops = MultiCrop(CropSection(global_size=32, local_size=16, local_number=5))
    out = crops(half_bright_image(), torch.Generator().manual_seed(0), global_size=32)
    assert [v.shape for v in out.globals_] == [(3, 32, 32)] * 2
    assert [v.shape for v in out.locals_] == [(3, 16, 16)] * 5
    assert torch.equal(out.globals_[0][0], out.globals_[0][2])


def test_no_flip_keeps_laterality_and_flip_probability_one_mirrors():
    keep = CropSection(
        global_size=32, global_scale=(0.95, 1.0), local_number=0, brightness=0, contrast=0,
        gamma=(1, 1), blur_probability=0, noise_std=0,
    )  # fmt: skip
    for seed in range(10):
        view = MultiCrop(keep).view(
            half_bright_image(), 32, (0.95, 1.0), torch.Generator().manual_seed(seed)
        )
        assert view[0, :, :8].mean() > view[0, :, -8:].mean()
    flip = CropSection(**{**keep.__dict__, "flip_probability": 1.0})
    view = MultiCrop(flip).view(
        half_bright_image(), 32, (0.95, 1.0), torch.Generator().manual_seed(0)
    )
    assert view[0, :, :8].mean() < view[0, :, -8:].mean()


def test_crop_box_respects_the_scale_range():
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(100, 80, (0.05, 0.32), rng)
        assert top >= 0 and top + h <= 100 and left >= 0 and left + w <= 80
        assert 0.04 * 8000 <= h * w <= 0.33 * 8000 or (h, w) == (80, 80)


def test_normalisation_matches_rad_dino_processor():
    flat = torch.full((1, 64, 64), 128, dtype=torch.uint8)
    plain = CropSection(
        local_number=0, brightness=0, contrast=0, gamma=(1, 1), blur_probability=0, noise_std=0
    )
    view = MultiCrop(plain).view(flat, 32, (0.5, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(view, torch.full_like(view, (128 / 255 - 0.5307) / 0.2583), atol=1e-5)


def bright_column_image() -> torch.Tensor:
    image = torch.zeros(1, 64, 64, dtype=torch.uint8)
    image[..., 29:35] = 250  # a vertical bar through the centre
    return image


def column_profile_peak(view: torch.Tensor) -> float:
    """Fraction of the bar's brightness left in the central columns of a (3, S, S) view."""
    x = view[0] - view[0].min()
    centre = x[:, x.shape[1] // 2 - 4 : x.shape[1] // 2 + 4]
    return float(centre.sum() / x.sum())


def test_without_rotation_a_bar_stays_upright_and_with_rotation_each_view_tilts_on_its_own():
    plain = CropSection(
        global_size=32, global_scale=(1.0, 1.0), local_number=0, brightness=0, contrast=0,
        gamma=(1, 1), blur_probability=0, noise_std=0,
    )  # fmt: skip
    image = bright_column_image()
    upright = MultiCrop(plain)(image, torch.Generator().manual_seed(3), global_size=32)
    assert all(column_profile_peak(v) > 0.9 for v in upright.globals_)
    turned = CropSection(**{**plain.__dict__, "rotation_degrees": 45.0})
    tilts = []
    for seed in range(6):
        out = MultiCrop(turned)(image, torch.Generator().manual_seed(seed), global_size=32)
        tilts.extend(column_profile_peak(v) for v in out.globals_)
        assert not torch.allclose(out.globals_[0], out.globals_[1])  # an angle for each view
    assert min(tilts) < 0.6  # a tilted bar leaves the central columns
