"""Rays of a projection, sampled through a virtual patient into the source anatomy.

The detector is perpendicular to y. Pixel (r, c) of an H x W image receives the ray from the
source to its centre; each ray is sampled at D depths (planes of constant y, one working-grid
voxel apart) spanning the patient. A sample at patient point p reads the source anatomy at
``to_source(p)``; that map is evaluated on a coarse lattice of the (H, W, D) samples and
interpolated trilinearly (exact for the projective part, smooth for the rest).

`RaySamples` holds the sampled attenuation and labels, shape (H, W, D), and answers the questions
that findings ask: where a sample lies in the source (``source_mm``) and in the patient
(``patient_mm``), which block of samples lies near a source point (``block_near``), and what the
anatomy holds at other source points (``sample``). Sampling goes through `PlaneStack`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raddino.data.synth.anatomy import Anatomy
from raddino.data.synth.deform import Pose, SkinMap, to_patient, to_source
from raddino.data.synth.patient import Geometry, Patient
from raddino.data.synth.sampler import PlaneStack

Block = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Projection:
    """Where the source, the detector and the depth planes are (patient mm)."""

    size: int
    pixel_mm: float
    source: tuple[float, float, float]
    detector_y: float
    centre_x: float
    centre_z: float
    depths: np.ndarray
    parallel: bool

    @property
    def plane_step_mm(self) -> float:
        """Distance between two consecutive depth planes (they are evenly spaced)."""
        return float(self.depths[1] - self.depths[0])

    def detector_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W,) x and (H,) z of pixel centres on the detector."""
        offsets = (
            torch.arange(self.size, dtype=torch.float32) + 0.5 - self.size / 2
        ) * self.pixel_mm
        return self.centre_x + offsets, self.centre_z + offsets

    def points(self, rows: torch.Tensor, cols: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Patient mm (..., 3) of samples at (fractional) pixel rows, columns and depth indices."""
        u = self.centre_x + (cols + 0.5 - self.size / 2) * self.pixel_mm
        v = self.centre_z + (rows + 0.5 - self.size / 2) * self.pixel_mm
        y = float(self.depths[0]) + depth * self.plane_step_mm
        if self.parallel:
            return torch.stack(torch.broadcast_tensors(u, y, v), dim=-1)
        sx, sy, sz = self.source
        fraction = (y - sy) / (self.detector_y - sy)
        return torch.stack(
            torch.broadcast_tensors(sx + fraction * (u - sx), y, sz + fraction * (v - sz)), dim=-1
        )

    def magnification(self, y: torch.Tensor) -> torch.Tensor:
        """Detector size of 1 mm at patient depth y."""
        if self.parallel:
            return torch.ones_like(y)
        sy = self.source[1]
        return (self.detector_y - sy) / (y - sy)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) patient mm -> (N, 2) fractional (row, col) on the image."""
        x, y, z = points.unbind(-1)
        if not self.parallel:
            sx, _, sz = self.source
            m = self.magnification(y)
            x, z = sx + m * (x - sx), sz + m * (z - sz)
        col = (x - self.centre_x) / self.pixel_mm + self.size / 2 - 0.5
        row = (z - self.centre_z) / self.pixel_mm + self.size / 2 - 0.5
        return torch.stack([row, col], dim=-1)

    def step_lengths(self) -> torch.Tensor:
        """(H, W) path length (mm) of a ray between two depth planes."""
        step = self.plane_step_mm
        if self.parallel:
            return torch.full((self.size, self.size), step)
        u, v = self.detector_uv()
        sid = abs(self.detector_y - self.source[1])
        du, dv = u - self.source[0], v - self.source[2]
        return step * torch.sqrt(1.0 + (dv[:, None] ** 2 + du[None, :] ** 2) / sid**2)


def skin_map(anatomy: Anatomy) -> SkinMap:
    return SkinMap(
        table=torch.from_numpy(np.asarray(anatomy.skin, dtype=np.float32)),
        z0=anatomy.corner[2],
        dz=anatomy.spacing[2],
    )


def plan_projection(anatomy: Anatomy, skin: SkinMap, patient: Patient, size: int) -> Projection:
    """Place source, detector and depth planes around the patient's body."""
    geometry: Geometry = patient.geometry
    low = np.asarray(anatomy.landmarks["body_min"])
    high = np.asarray(anatomy.landmarks["body_max"])
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])  # fmt: skip
    y = to_patient(torch.tensor(corners, dtype=torch.float32), patient.pose, skin)[:, 1]
    reach = max(patient.pose.fat_mm, 0.0) + 15.0
    front = float(y.min()) - reach - (45.0 if patient.breasts else 0.0)
    back = float(y.max()) + reach
    step = anatomy.spacing[1]
    depths = front + step * np.arange(math.ceil((back - front) / step) + 1)
    if geometry.view == "PA":  # source behind, detector in front of the chest
        detector_y = front - geometry.detector_gap_mm
        source_y = detector_y + geometry.sid_mm
    else:
        detector_y = back + geometry.detector_gap_mm
        source_y = detector_y - geometry.sid_mm
    return Projection(
        size=size,
        pixel_mm=geometry.field_mm / size,
        source=(geometry.centre_x, source_y, geometry.centre_z),
        detector_y=detector_y,
        centre_x=geometry.centre_x,
        centre_z=geometry.centre_z,
        depths=depths,
        parallel=geometry.parallel,
    )


class RaySamples:
    """Attenuation and labels at every ray sample, (H, W, D), and the map behind them.

    soft, bone: (H, W, D) float32 attenuation (1/mm); labels: (H, W, D) uint8; ``index``:
    (3, H, W, D) float32 source voxel coordinates (x, y, z) of every sample.
    """

    def __init__(
        self,
        projection: Projection,
        pose: Pose,
        skin: SkinMap,
        stack: PlaneStack,
        corner: tuple[float, float, float],
        spacing: tuple[float, float, float],
    ) -> None:
        self.projection = projection
        self.stack = stack
        self.corner = torch.tensor(corner)
        self.spacing = torch.tensor(spacing)
        size, depth = projection.size, len(projection.depths)
        self.shape = (size, size, depth)
        coarse = (max(9, size // 8 + 1), max(9, size // 8 + 1), max(5, depth // 6 + 1))
        axes = [torch.linspace(0, n - 1, c) for n, c in zip(self.shape, coarse, strict=True)]
        rows, cols, depths = torch.meshgrid(*axes, indexing="ij")
        patient = projection.points(rows, cols, depths).reshape(-1, 3)
        self.coarse_axes = axes
        self.coarse_source = to_source(patient, pose, skin).reshape(*coarse, 3)  # mm
        self.margin = self._coarse_spacing()
        self.index = self._upsample(self.to_index(self.coarse_source))
        self.soft, self.bone = stack.trilinear(*self.index, channels=(0, 1)).unbind(0)
        self.labels = stack.labels(*self.index)

    def _upsample(self, coarse: torch.Tensor) -> torch.Tensor:
        """(h, w, d, 3) coarse lattice -> (3, H, W, D): bilinear in-plane, then linear in depth
        (trilinear, in two cheap passes)."""
        h, w, d, _ = coarse.shape
        size, _, depth = self.shape
        planes = coarse.permute(3, 2, 0, 1).reshape(1, 3 * d, h, w)
        planes = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=True)
        rays = planes.view(3, d, size, size).permute(0, 2, 3, 1).reshape(-1, 1, d)
        out = F.interpolate(rays, size=depth, mode="linear", align_corners=True)
        return out.view(3, size, size, depth)

    def to_index(self, points: torch.Tensor) -> torch.Tensor:
        """Source mm (..., 3) -> voxel coordinates (..., 3)."""
        return (points - self.corner) / self.spacing

    def source_mm(self, block: Block, where: torch.Tensor | None = None) -> torch.Tensor:
        """Source mm of the samples in ``block``: (h, w, d, 3), or (N, 3) for the samples where
        the (h, w, d) bool ``where`` holds."""
        axes = [axis[block] if where is None else axis[block][where] for axis in self.index]
        return torch.stack(axes, dim=-1) * self.spacing + self.corner

    def source_axis(self, block: Block, axis: int) -> torch.Tensor:
        """(h, w, d) one source coordinate (0: x, 1: y, 2: z) in mm of the samples in ``block``."""
        return self.index[axis][block] * self.spacing[axis] + self.corner[axis]

    def patient_mm(self, block: Block, where: torch.Tensor) -> torch.Tensor:
        """(N, 3) patient mm of the samples of ``block`` where ``where`` (h, w, d) holds."""
        rows, cols, depths = torch.nonzero(where).T.float()
        return self.projection.points(
            rows + block[0].start, cols + block[1].start, depths + block[2].start
        )

    def sample(
        self, points: torch.Tensor, channels: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The anatomy at source mm (..., 3): ``channels`` (C, ...) and labels (...)."""
        x, y, z = self.to_index(points).unbind(-1)
        return self.stack.trilinear(x, y, z, channels=channels), self.stack.labels(x, y, z)

    def occupancy(self, block: Block, channel: int) -> torch.Tensor:
        """(h, w, d) fraction of lung (channel 2) or heart (3) at the samples of ``block``."""
        return self.stack.trilinear(*(axis[block] for axis in self.index), channels=(channel,))[0]

    def block_near(self, centre: tuple[float, float, float], radius: float) -> Block | None:
        """The box of samples whose source point may lie within ``radius`` mm of ``centre``."""
        distance = (self.coarse_source - torch.tensor(centre)).norm(dim=-1)
        return self._block(distance <= radius + self.margin)

    def block_in_box(self, low: list[float], high: list[float]) -> Block | None:
        """The box of samples whose source point may lie in the box ``low``..``high`` (mm)."""
        margin = self.margin
        q = self.coarse_source
        inside = ((q >= torch.tensor(low) - margin) & (q <= torch.tensor(high) + margin)).all(-1)
        return self._block(inside)

    def _block(self, near: torch.Tensor) -> Block | None:
        hits = torch.nonzero(near)
        if len(hits) == 0:
            return None
        block = []
        for axis, n in enumerate(self.shape):
            positions = self.coarse_axes[axis]
            low = math.floor(positions[max(int(hits[:, axis].min()) - 1, 0)])
            high = math.ceil(positions[min(int(hits[:, axis].max()) + 1, len(positions) - 1)])
            block.append(slice(low, min(high + 1, n)))
        return tuple(block)  # type: ignore[return-value]

    def _coarse_spacing(self) -> float:
        """Half the largest source diagonal of a coarse lattice cell: a sample lies this close
        to a lattice point of its cell (the map is smooth and near-affine at this scale)."""
        steps = [
            (self.coarse_source.narrow(a, 1, n - 1) - self.coarse_source.narrow(a, 0, n - 1))
            .norm(dim=-1)
            .max()
            for a, n in enumerate(self.coarse_source.shape[:3])
        ]
        return 0.5 * float(torch.stack(steps).norm()) + 1.0

    def covered(self, overshoot_mm: float = 20.0) -> torch.Tensor:
        """(H, W) bool: the ray stays within ``overshoot_mm`` of the CT's craniocaudal range
        (beyond it, the first or last slice repeats)."""
        z = self.coarse_source[..., 2]
        extremes = torch.stack([z.amin(dim=-1), z.amax(dim=-1)])[None]
        extremes = F.interpolate(extremes, size=self.shape[:2], mode="bilinear", align_corners=True)
        low = float(self.corner[2])
        high = low + float(self.spacing[2]) * (self.stack.shape[0] - 1)
        return (extremes[0, 0] >= low - overshoot_mm) & (extremes[0, 1] <= high + overshoot_mm)
