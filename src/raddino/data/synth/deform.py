"""Virtual patients as smooth deformations of the source anatomy.

A virtual patient is described by where each of its points comes from in the source CT (a
pull-back map, ``to_source``), composed of, in this order from the patient's side:

1. positioning: a rigid rotation and translation;
2. body habitus: anisotropic scaling about the centre of the lungs;
3. inspiration: a craniocaudal stretch of the chest that moves the diaphragm by ``inspiration_mm``
   (positive = deeper breath = lower diaphragm) and carries the abdomen with it;
4. soft-tissue thickness: the outer ``SHELL_MM`` of the body (skin, subcutaneous fat) is
   stretched radially, in each axial slice, to ``SHELL_MM + fat_mm`` (``fat_mm < 0``: thinner),
   more toward the abdomen by ``fat_gradient``;
5. heart size and position: a local zoom by ``heart_scale`` and shift by ``heart_shift`` within
   ``heart_radius`` of ``heart_centre``, fading out smoothly by 1.7 times that radius;
6. elastic deformation: a smooth random displacement field (control points, trilinear).

The map is smooth, so renderers evaluate it on a coarse lattice and interpolate. ``to_patient``
inverts it by fixed-point iteration, for the few points (device paths) that live in the patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Pose:
    """Everything that maps a virtual patient onto the source anatomy (all lengths in mm).

    rotation_deg: about the patient's x (tilt), y (in-plane) and z (body axis) axes.
    translation_mm: (x, y, z) shift of the patient.
    scale: (x, y, z) habitus scaling (> 1: a larger patient).
    inspiration_mm: diaphragm displacement; the stretch acts between ``apex_z`` and ``dome_z``.
    fat_mm: extra subcutaneous tissue at ``fat_centre_z``, changing by ``fat_gradient`` per
    150 mm toward the feet.
    heart_*: normal variation of the heart's size and position (mm).
    elastic_mm: (3, gz, gy, gx) displacements (x, y, z) at control points spread evenly over
    the box ``elastic_low`` .. ``elastic_high`` of the anatomy.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scale: tuple[float, float, float]
    inspiration_mm: float
    apex_z: float
    dome_z: float
    fat_mm: float
    fat_gradient: float
    fat_centre_z: float
    heart_centre: tuple[float, float, float]
    heart_radius: float
    heart_scale: float
    heart_shift: tuple[float, float, float]
    elastic_mm: np.ndarray
    elastic_low: tuple[float, float, float]
    elastic_high: tuple[float, float, float]


SHELL_MM = 30.0
"""Thickness of the outer body layer that the soft-tissue warp stretches."""


@dataclass(frozen=True)
class SkinMap:
    """The skin in polar coordinates, per axial slice of the anatomy.

    table: (Z, 2 + A) float32 rows (centre x, centre y, radius at A angles from +x toward +y);
    slice k lies at ``z0 + k * dz`` mm.
    """

    table: torch.Tensor
    z0: float
    dz: float

    def radius(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For (N, 3) mm: skin radius (N,), centre (N, 2) and the point's radius (N,)."""
        slices, angles = self.table.shape[0], self.table.shape[1] - 2
        k = ((points[:, 2] - self.z0) / self.dz).clamp(0, slices - 1)
        k0 = k.floor().long().clamp(max=slices - 2)
        w = (k - k0)[:, None]
        rows = self.table[k0] * (1 - w) + self.table[k0 + 1] * w  # (N, 2 + A)
        centre = rows[:, :2]
        offset = points[:, :2] - centre
        a = torch.atan2(offset[:, 1], offset[:, 0]) % (2 * math.pi) / (2 * math.pi) * angles
        a0 = a.floor().long() % angles
        wa = a - a.floor()
        radii = rows[:, 2:]
        skin = (
            radii.gather(1, a0[:, None])[:, 0] * (1 - wa)
            + radii.gather(1, ((a0 + 1) % angles)[:, None])[:, 0] * wa
        )
        return skin, centre, offset.norm(dim=-1)


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """(3, 3) rotation R = Rz @ Ry @ Rx for angles about x, y, z in degrees."""
    ax, ay, az = (math.radians(a) for a in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def elastic_displacement(points: torch.Tensor, pose: Pose) -> torch.Tensor:
    """(N, 3) anatomy mm -> (N, 3) displacement mm, trilinear between control points."""
    low = torch.tensor(pose.elastic_low, dtype=points.dtype)
    high = torch.tensor(pose.elastic_high, dtype=points.dtype)
    grid = (2.0 * (points - low) / (high - low) - 1.0).view(1, -1, 1, 1, 3)
    field = torch.as_tensor(pose.elastic_mm, dtype=points.dtype)[None]
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(3, -1).T


def thicken(points: torch.Tensor, pose: Pose, skin: SkinMap) -> torch.Tensor:
    """Pull-back of the soft-tissue warp: (N, 3) patient-side mm -> (N, 3) anatomy mm."""
    if pose.fat_mm == 0.0:
        return points
    ramp = ((points[:, 2] - pose.fat_centre_z) / 150.0).clamp(-1.0, 1.0)
    extra = (pose.fat_mm * (1.0 + pose.fat_gradient * ramp)).clamp(min=-0.35 * SHELL_MM)
    radius, centre, rho = skin.radius(points)
    inner = (radius - SHELL_MM).clamp(min=0.0)
    shell = radius - inner
    stretched = inner + (rho - inner) * shell / (shell + extra)
    rho_source = torch.where(rho > inner, stretched, rho)
    rho_source = torch.where(rho > radius + extra, rho - extra, rho_source)  # beyond the skin
    factor = rho_source / rho.clamp(min=1e-3)
    xy = centre + (points[:, :2] - centre) * factor[:, None]
    return torch.cat([xy, points[:, 2:]], dim=1)


def move_heart(points: torch.Tensor, pose: Pose) -> torch.Tensor:
    """Pull-back of the heart's zoom and shift: (N, 3) -> (N, 3) anatomy mm."""
    if pose.heart_scale == 1.0 and not any(pose.heart_shift):
        return points
    centre = torch.tensor(pose.heart_centre, dtype=points.dtype)
    zoomed = centre + (points - centre - torch.tensor(pose.heart_shift)) / pose.heart_scale
    distance = (points - centre).norm(dim=-1) / pose.heart_radius
    weight = 1.0 - smoothstep((distance - 1.0) / 0.7)
    return points + weight[:, None] * (zoomed - points)


def to_source(points: torch.Tensor, pose: Pose, skin: SkinMap) -> torch.Tensor:
    """(N, 3) patient mm (x, y, z) -> (N, 3) source-anatomy mm."""
    rotation = torch.as_tensor(rotation_matrix(pose.rotation_deg), dtype=points.dtype)
    shift = torch.tensor(pose.translation_mm, dtype=points.dtype)
    q = (points - shift) @ rotation  # R^T (p - t), row vectors
    q = q / torch.tensor(pose.scale, dtype=points.dtype)
    ramp = smoothstep((q[:, 2] - pose.apex_z) / (pose.dome_z - pose.apex_z))
    q = torch.stack([q[:, 0], q[:, 1], q[:, 2] - pose.inspiration_mm * ramp], dim=1)
    q = move_heart(thicken(q, pose, skin), pose)
    return q + elastic_displacement(q, pose)


def to_patient(
    points: torch.Tensor, pose: Pose, skin: SkinMap, iterations: int = 30
) -> torch.Tensor:
    """(N, 3) source-anatomy mm -> (N, 3) patient mm: the inverse of `to_source`."""
    rotation = torch.as_tensor(rotation_matrix(pose.rotation_deg), dtype=points.dtype)
    scale = torch.tensor(pose.scale, dtype=points.dtype)
    shift = torch.tensor(pose.translation_mm, dtype=points.dtype)
    patient = (points * scale) @ rotation.T + shift  # the affine part's inverse as a start
    for _ in range(iterations):
        error = points - to_source(patient, pose, skin)  # in source mm
        patient = patient + (error * scale) @ rotation.T
    return patient
