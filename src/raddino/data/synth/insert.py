"""Changes to the sampled 3D attenuation: breasts, heart size and the findings.

Each function edits `RaySamples` in place (``soft``, ``labels``), inside the block of samples
that can be affected, before projection. Findings return their projected mask: (H, W) bool, the
rays that cross the lesion.
"""

from __future__ import annotations

import torch

from raddino.data.synth import structures as st
from raddino.data.synth.anatomy import MU_WATER
from raddino.data.synth.findings import (
    Consolidation,
    Effusion,
    Nodule,
    Pneumothorax,
)
from raddino.data.synth.patient import Breast
from raddino.data.synth.rays import Block, RaySamples

MU_FAT = 0.91 * MU_WATER
MU_FLUID = 1.01 * MU_WATER
MU_TISSUE = 1.04 * MU_WATER
EDGE_MM = 1.5
"""Narrowest partial-volume width of a lesion boundary (see `ramp`)."""


def isin(labels: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """labels (any shape, uint8) -> bool of the same shape: the label is one of ``ids``.

    Compares against runs of consecutive ids (much faster than `torch.isin` on CPU).
    """
    ordered = sorted(set(ids))
    out = torch.zeros(labels.shape, dtype=torch.bool)
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            low, high = ordered[start], ordered[index - 1]
            out |= (labels == low) if low == high else (labels >= low) & (labels <= high)
            start = index
    return out


def project_mask(rays: RaySamples, block: Block, member: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: rays of ``block`` with any sample where ``member`` (h, w, d) holds."""
    out = torch.zeros(rays.shape[:2], dtype=torch.bool)
    out[block[0], block[1]] = member.any(dim=-1)
    return out


def ray_steps(points: torch.Tensor) -> torch.Tensor:
    """Samples (h, w, d, 3) along rays (source mm) -> (h, w, d, 3) vector from each to the next
    on its ray (the last repeats the one before)."""
    steps = points[:, :, 1:] - points[:, :, :-1]
    return torch.cat([steps, steps[:, :, -1:]], dim=2)


def ramp(distance: torch.Tensor, normal: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Fraction inside a boundary at signed ``distance`` (mm, positive inside; shape S) with
    unit ``normal`` (S + (3,)), for samples ``step`` apart along their rays (S + (3,)).

    The partial-volume ramp is `EDGE_MM` wide, or wider where that is needed for each ray to
    cross it over exactly one step: ``|normal . step|``. A boundary crossed within less than
    one step projects as terraces (the number of samples inside a sphere jumps from ray to
    ray, and its shadow becomes concentric rings, which edge enhancement then sharpens); over
    exactly one step, the ray's sum grows in proportion to where the boundary lies between two
    samples. Where rays graze the boundary (its silhouette) the ramp stays `EDGE_MM` wide, so
    the edge stays sharp on the image.
    """
    width = (normal * step).sum(-1).abs().clamp(min=EDGE_MM)
    return (distance / width + 0.5).clamp(0.0, 1.0)


def add_breasts(rays: RaySamples, breasts: tuple[Breast, ...]) -> None:
    """Fill the air in front of the chest within each breast: the front half of an ellipsoid
    whose upper half is 1.8 times taller, so the upper pole slopes into the chest wall and the
    lower contour (the inframammary fold) is the sharp one. Surfaces have partial-volume
    margins (`ramp`)."""
    for breast in breasts:
        rx, ry, rz = breast.radii
        cx, cy, cz = breast.centre
        block = rays.block_in_box([cx - rx, cy - ry, cz - 1.8 * rz], [cx + rx, cy, cz + rz])
        if block is None:
            continue
        air = (rays.labels[block] == 0) & (rays.soft[block] < 0.3 * MU_WATER)
        points = rays.source_mm(block)
        q = points[air] - torch.tensor(breast.centre)
        step = ray_steps(points)[air]
        height = torch.where(q[:, 2] < 0, 1.8 * rz, rz)
        radii = torch.stack([torch.full_like(height, rx), torch.full_like(height, ry), height], -1)
        level = (q / radii).norm(dim=-1).clamp(min=1e-6)  # 1 on the surface
        gradient = q / radii.square() / level[:, None]
        slope = gradient.norm(dim=-1).clamp(min=1e-9)
        # signed distance to the surface, to first order: (1 - level) / |grad level|
        inside = ramp((1.0 - level) / slope, gradient / slope[:, None], step)
        front = ramp(-q[:, 1], torch.tensor([0.0, 1.0, 0.0]), step)  # the half toward y < 0
        fraction = inside * front
        mu = MU_WATER * (1.0 + breast.hu / 1000.0)
        soft = rays.soft[block]
        soft[air] = torch.lerp(soft[air], torch.full_like(fraction, mu), fraction)


LUNG, HEART = 2, 3
"""Occupancy channels of the anatomy (see `raddino.data.synth.anatomy.CHANNELS`)."""


def enlarge_heart(
    rays: RaySamples, low: list[float], high: list[float], factor: float
) -> torch.Tensor:
    """Cardiomegaly: the heart (box ``low``..``high``, source mm) grows by ``factor`` about the
    middle of its upper right border, so its apex moves left and down.

    Only heart tissue moves: it grows into fat and lung (not below the diaphragm: at most 10 mm
    below the heart's lowest point) and stops at the aorta and bones; everything else stays in
    place. Returns the projected enlarged heart (H, W) bool.
    """
    lo, hi = torch.tensor(low), torch.tensor(high)
    centre = lo + (hi - lo) * torch.tensor([0.3, 0.5, 0.25])
    grown_low, grown_high = centre + (lo - centre) * factor, centre + (hi - centre) * factor
    grown_high[2] = hi[2] + 10.0
    block = rays.block_in_box(grown_low.tolist(), grown_high.tolist())
    if block is None:
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    allowed = isin(rays.labels[block], st.HEART_MAY_GROW_INTO)
    q = rays.source_mm(block, allowed)
    inside = ((q >= grown_low) & (q <= grown_high)).all(dim=-1)
    (soft_zoom, heart), _ = rays.sample(centre + (q[inside] - centre) / factor, (0, HEART))
    grow = torch.zeros(len(q))
    grow[inside] = heart
    soft_zoomed = torch.zeros(len(q))
    soft_zoomed[inside] = soft_zoom
    soft, labels = rays.soft[block], rays.labels[block]
    soft[allowed] = torch.lerp(soft[allowed], soft_zoomed, grow)
    labels[allowed] = torch.where(grow > 0.5, st.HEART[0], labels[allowed]).to(torch.uint8)
    return project_mask(rays, block, isin(labels, st.HEART))


def _lobulated_radius(direction: torch.Tensor, nodule: Nodule) -> torch.Tensor:
    lobulation = torch.as_tensor(nodule.lobulation, dtype=torch.float32)
    cosines = direction @ lobulation[:, :3].T  # (..., K)
    return nodule.radius_mm * (1.0 + ((cosines.square() - 1.0 / 3.0) * lobulation[:, 3]).sum(-1))


def insert_nodule(rays: RaySamples, nodule: Nodule) -> torch.Tensor:
    """A lobulated soft-tissue nodule replacing aerated lung, with a partial-volume margin."""
    reach = nodule.radius_mm * (1.0 + float(nodule.lobulation[:, 3].sum()))
    block = rays.block_near(nodule.centre, reach + max(EDGE_MM, rays.projection.plane_step_mm))
    if block is None:
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    points = rays.source_mm(block)
    offset = points - torch.tensor(nodule.centre)
    distance = offset.norm(dim=-1).clamp(min=1e-3)
    direction = offset / distance[..., None]
    radius = _lobulated_radius(direction, nodule)
    fraction = ramp(radius - distance, direction, ray_steps(points))
    fraction = fraction * rays.occupancy(block, LUNG)
    mu = MU_WATER * (1.0 + nodule.hu / 1000.0)
    rays.soft[block] = torch.lerp(rays.soft[block], torch.full_like(fraction, mu), fraction)
    return project_mask(rays, block, fraction > 0.5)


def insert_consolidation(rays: RaySamples, finding: Consolidation) -> torch.Tensor:
    """Airspace opacity in one lobe with fuzzy margins; airways stay dark (air bronchograms)."""
    block = rays.block_near(finding.centre, finding.radius_mm + 15.0)
    if block is None:
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    q = rays.source_mm(block)
    distance = (q - torch.tensor(finding.centre)).norm(dim=-1)
    texture = 0.85 + 0.15 * torch.sin(q @ torch.tensor([0.11, 0.07, 0.13]) + finding.radius_mm)
    fraction = finding.density * ((finding.radius_mm - distance) / 15.0 + 0.5).clamp(0.0, 1.0)
    lobe = rays.labels[block] == st.LOBES[finding.lobe]
    airway = rays.soft[block] < 0.05 * MU_WATER
    fraction = fraction * texture * (lobe & ~airway) * rays.occupancy(block, LUNG)
    rays.soft[block] = torch.lerp(rays.soft[block], torch.full_like(fraction, MU_TISSUE), fraction)
    return project_mask(rays, block, fraction > 0.25)


def side_block(rays: RaySamples, landmarks: dict[str, list[float]], side: str) -> Block | None:
    return rays.block_in_box(landmarks[f"lung_{side}_min"], landmarks[f"lung_{side}_max"])


def pleural_space(
    rays: RaySamples, block: Block, landmarks: dict[str, list[float]], side: str
) -> torch.Tensor:
    """(h, w, d) fraction of each sample in ``side``'s pleural cavity (the lung before findings)."""
    midline = 0.5 * (landmarks["lung_left_min"][0] + landmarks["lung_right_max"][0])
    x = rays.source_axis(block, 0)
    on_side = x > midline if side == "left" else x <= midline
    return rays.occupancy(block, LUNG) * on_side


def insert_effusion(
    rays: RaySamples, effusion: Effusion, landmarks: dict[str, list[float]], supine: bool
) -> torch.Tensor:
    """Fluid in the dependent pleural space of one side.

    Upright (PA): below a level that rises toward the lateral and posterior chest wall (the
    meniscus), so the costophrenic angle blunts first. Supine (AP): layering along the back, a
    veil over the hemithorax.
    """
    block = side_block(rays, landmarks, effusion.side)
    if block is None:
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    pleural = pleural_space(rays, block, landmarks, effusion.side)
    where = pleural > 0
    if not where.any():
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    x, y, z = rays.patient_mm(block, where).unbind(-1)
    weight = pleural[where]
    inside = weight > 0.5
    if supine:
        back, front = y[inside].max(), y[inside].min()
        level = back - effusion.fraction * (back - front)
        depth = y - level
    else:
        bottom, top = z[inside].max(), z[inside].min()
        inner, outer = x[inside].min(), x[inside].max()
        if effusion.side == "right":
            inner, outer = outer, inner
        lateral = ((x - inner) / (outer - inner)).clamp(0.0, 1.0)
        back, front = y[inside].max(), y[inside].min()
        posterior = ((y - front) / (back - front)).clamp(0.0, 1.0)
        rise = effusion.meniscus_mm * (lateral.square() + 0.5 * posterior.pow(3))
        level = bottom - effusion.fraction * (bottom - top) - rise
        depth = z - level
    fraction = (depth / 6.0 + 0.5).clamp(0.0, 1.0) * weight
    soft, labels = rays.soft[block], rays.labels[block]
    soft[where] = torch.lerp(soft[where], torch.full_like(fraction, MU_FLUID), fraction)
    labels[where] = torch.where(fraction > 0.5, 0, labels[where]).to(torch.uint8)
    fluid = torch.zeros_like(where)
    fluid[where] = fraction > 0.5
    return project_mask(rays, block, fluid)


def insert_pneumothorax(
    rays: RaySamples, finding: Pneumothorax, landmarks: dict[str, list[float]]
) -> torch.Tensor:
    """The lung shrinks toward ``finding.centre`` in the coronal plane (x and z) by
    ``finding.collapse``; pleural air fills the rest of the cavity, with no lung markings; the
    visceral pleura is a thin line of tissue on the collapsed lung's surface; the collapsed lung
    is denser.

    Returns the visible pneumothorax, as annotated on radiographs: the rays that cross pleural
    air and no lung of that side (beyond the pleural line). Over the collapsed lung the image
    also changes (the lung is thinner and denser there), within the lung's own mask.
    """
    block = side_block(rays, landmarks, finding.side)
    if block is None:
        return torch.zeros(rays.shape[:2], dtype=torch.bool)
    pleural = pleural_space(rays, block, landmarks, finding.side)
    where = pleural > 0
    q = rays.source_mm(block, where)  # (N, 3)
    centre = torch.tensor(finding.centre)
    shrink = torch.tensor([finding.collapse, 1.0, finding.collapse])
    lung_point = centre + (q - centre) / shrink
    (soft_lung, lung), labels_lung = rays.sample(lung_point, channels=(0, LUNG))
    radial = lung_point - centre
    radial = radial / radial.norm(dim=-1, keepdim=True).clamp(min=1e-3)
    (outside,), _ = rays.sample(lung_point + 2.5 * radial, channels=(LUNG,))
    pleura = (lung - outside).clamp(0.0, 1.0)
    compressed = (soft_lung / finding.collapse**1.5).clamp(max=MU_WATER)
    new = torch.maximum(lung * compressed, pleura * 0.8 * MU_WATER)
    weight = pleural[where]
    block_soft = rays.soft[block]
    block_soft[where] = torch.lerp(block_soft[where], new, weight)
    air, tissue = torch.zeros_like(where), torch.zeros_like(where)
    air[where] = weight * (1.0 - lung) > 0.5
    tissue[where] = weight * lung > 0.5
    block_labels = rays.labels[block]
    block_labels[where] = torch.where(lung > 0.5, labels_lung, 0).to(torch.uint8)
    return project_mask(rays, block, air) & ~project_mask(rays, block, tissue)
