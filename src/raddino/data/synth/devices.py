"""Support devices (chest tubes, central lines) as tubes with exact line integrals.

A device is a thin tube along a smooth 3D path. Instead of voxelising it, its path is carried
into the patient (`to_patient`), projected onto the detector, and each pixel receives the exact
line integral through the tube's annular cross-section at its distance from the projected axis
(the ray crosses the tube about perpendicularly). This is the projection of the 3D object, at
the detector's resolution, for the cost of a 2D distance map.
"""

from __future__ import annotations

import torch

from raddino.data.synth.deform import Pose, SkinMap, to_patient
from raddino.data.synth.findings import Tube
from raddino.data.synth.rays import Projection

STRIPE_MM = 0.6
"""Half-width (1/e) of a chest tube's radio-opaque stripe."""
_THIRDS = (-1 / 3, 0.0, 1 / 3)
SUBPIXEL_OFFSETS = torch.tensor([(r, c) for r in _THIRDS for c in _THIRDS])
"""Where each pixel is sampled (rows, columns; 3 x 3 over its area)."""


def _segment_distance(
    pixels: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (P, S) from pixels (P, 2) to segments (S, 2)-(S, 2), and the position t (P, S)."""
    direction = ends - starts
    length2 = direction.square().sum(-1).clamp(min=1e-6)
    t = (((pixels[:, None, :] - starts) * direction).sum(-1) / length2).clamp(0.0, 1.0)
    closest = starts + t[..., None] * direction
    return (pixels[:, None, :] - closest).norm(dim=-1), t


def project_tube(
    tube: Tube, pose: Pose, skin: SkinMap, projection: Projection
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tube's line integrals (H, W) float32 and its mask (H, W) bool."""
    size = projection.size
    line = torch.zeros(size, size)
    mask = torch.zeros(size, size, dtype=torch.bool)
    path = to_patient(torch.as_tensor(tube.path, dtype=torch.float32), pose, skin)
    rowcol = projection.project(path)  # (K, 2)
    scale = projection.magnification(path[:, 1]) / projection.pixel_mm  # pixels per mm at depth
    reach = float(tube.outer_mm * scale.max()) + 1.0
    low = (rowcol.amin(0) - reach).floor().clamp(0, size - 1).long()
    high = (rowcol.amax(0) + reach).ceil().clamp(0, size - 1).long()
    if (rowcol.amax(0) < -reach).any() or (rowcol.amin(0) > size - 1 + reach).any():
        return line, mask
    rows = torch.arange(int(low[0]), int(high[0]) + 1, dtype=torch.float32)
    cols = torch.arange(int(low[1]), int(high[1]) + 1, dtype=torch.float32)
    pixels = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    # the pixel's area, not its centre: a line thinner than a pixel would otherwise alias into
    # dashes wherever it passes between pixel centres
    integral = torch.zeros(len(pixels))
    covered = torch.zeros(len(pixels), dtype=torch.bool)
    for offset in SUBPIXEL_OFFSETS:
        d_mm = axis_distance(pixels + offset, rowcol, scale)
        integral += tube_profile(tube, d_mm) / len(SUBPIXEL_OFFSETS)
        covered |= d_mm < tube.outer_mm
    shape = (len(rows), len(cols))
    region = (slice(int(low[0]), int(high[0]) + 1), slice(int(low[1]), int(high[1]) + 1))
    line[region] = integral.reshape(shape)
    mask[region] = covered.reshape(shape)
    return line, mask


def axis_distance(pixels: torch.Tensor, rowcol: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Distance (P,) in patient mm from pixels (P, 2) to the projected axis ``rowcol`` (K, 2),
    whose magnification is ``scale`` (K,) pixels per mm."""
    best = torch.full((len(pixels),), float("inf"))
    best_scale = torch.ones(len(pixels))
    for start in range(0, len(rowcol) - 1, 64):
        stop = min(start + 65, len(rowcol))
        distance, t = _segment_distance(pixels, rowcol[start : stop - 1], rowcol[start + 1 : stop])
        nearest = distance.argmin(dim=1)
        d = distance.gather(1, nearest[:, None])[:, 0]
        t = t.gather(1, nearest[:, None])[:, 0]
        s = scale[start : stop - 1][nearest] * (1 - t) + scale[start + 1 : stop][nearest] * t
        closer = d < best
        best = torch.where(closer, d, best)
        best_scale = torch.where(closer, s, best_scale)
    return best / best_scale


def tube_profile(tube: Tube, d_mm: torch.Tensor) -> torch.Tensor:
    """Line integral through the tube's annular wall (and radio-opaque stripe) at distance
    ``d_mm`` from its axis."""
    outer, inner = tube.outer_mm, tube.inner_mm
    chord = 2.0 * (
        (outer**2 - d_mm.square()).clamp(min=0.0).sqrt()
        - (inner**2 - d_mm.square()).clamp(min=0.0).sqrt()
    )
    return tube.wall_mu * chord + tube.stripe * torch.exp(-(d_mm / STRIPE_MM).square())
