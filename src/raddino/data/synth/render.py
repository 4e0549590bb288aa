"""Digitally reconstructed radiographs of virtual patients.

For each detector pixel: the line integral of linear attenuation along its ray (cone beam from a
point source, or parallel), through the virtual patient with its findings; Beer-Lambert
intensity ``exp(-L)``; quantum noise for the patient's exposure; detector blur; collimation; a
log-domain display like a detector's processing (window from the body's line integrals without
findings, then a tone curve), so that bone is bright, lung dark and air black. Images are
(H, W) uint16, the patient's right on the image left (radiological convention) in PA and AP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raddino.data.synth import insert
from raddino.data.synth import structures as st
from raddino.data.synth.anatomy import MU_WATER, Anatomy
from raddino.data.synth.devices import project_tube
from raddino.data.synth.findings import FINDINGS
from raddino.data.synth.patient import Display, Geometry, Patient
from raddino.data.synth.rays import Projection, RaySamples, plan_projection, skin_map
from raddino.data.synth.sampler import PlaneStack

SHARPEN_MM = 2.5
"""Scale (Gaussian sigma) of the edge enhancement."""
MASKS: tuple[str, ...] = (*st.ANATOMY_MASKS, *FINDINGS)
"""Every mask a rendering returns: anatomy first, then one per finding (empty when absent)."""


@dataclass
class Rendered:
    """image: (H, W) uint16; masks: name -> (H, W) bool (all of MASKS); exposed: (H, W) bool,
    the collimated field."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    exposed: np.ndarray


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) -> (H, W), separable Gaussian with reflected borders."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(image[None, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[0, 0]


def collimated_field(geometry: Geometry, covered: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the exposed rectangle, inside the collimator blades and the CT's coverage."""
    size = covered.shape[0]
    top, bottom, left, right = (math.ceil(c * size) for c in geometry.collimation)
    middle = covered[:, size // 4 : 3 * size - 3 * size // 4].all(dim=1)
    rows = torch.nonzero(middle)[:, 0]
    first, last = (int(rows.min()) + 1, int(rows.max())) if len(rows) else (0, size)
    top, bottom = max(top, first), min(size - bottom, last)
    if bottom - top < size // 2:  # the CT covers too little: keep a usable field
        top, bottom = 0, size
    field = torch.zeros(size, size, dtype=torch.bool)
    field[top:bottom, left : size - right] = True
    return field


def low_pass(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) -> (H, W) Gaussian blur of width ``sigma`` px, computed at a quarter resolution."""
    small = F.avg_pool2d(image[None, None], 4, ceil_mode=True)
    small = gaussian_blur(small[0, 0], max(sigma / 4.0, 0.5))
    return F.interpolate(small[None, None], size=image.shape, mode="bilinear")[0, 0]


def detector_image(
    line: torch.Tensor,
    line_anatomy: torch.Tensor,
    exposed: torch.Tensor,
    display: Display,
    pixel_mm: float,
) -> torch.Tensor:
    """(H, W) line integrals -> (H, W) display values in [0, 1].

    Beer-Lambert intensity with quantum noise, detector blur, then the log signal with the
    processing of a digital radiograph: large-scale equalisation (subtracting ``equalization``
    times a 60 mm blur of the signal), edge enhancement (adding ``sharpening`` times the
    detail finer than ``SHARPEN_MM``) and a window with a gamma. Window and equalisation come
    from ``line_anatomy`` (no findings, no noise), so a finding changes pixels only where it
    projects.
    """
    reference = torch.where(exposed, line_anatomy, line_anatomy[exposed].max())
    background = low_pass(reference, 60.0 / pixel_mm)
    background = display.equalization * (background - background[exposed].median())
    body = (line_anatomy - background)[exposed & (line_anatomy > 0.3)]
    if body.numel() < 16:
        body = (line_anatomy - background).flatten()
    low = float(torch.quantile(body, display.window_low_pct / 100.0))
    high = float(torch.quantile(body, display.window_high_pct / 100.0))
    low = low - 0.15 * (high - low)
    line = torch.where(exposed, line, high + background + 1.0)
    intensity = torch.exp(-line)
    photons = display.photons_per_mm2 * pixel_mm**2
    generator = torch.Generator().manual_seed(display.noise_seed)
    noise = torch.randn(intensity.shape, generator=generator)
    intensity = (intensity + (intensity / photons).sqrt() * noise).clamp(min=0.5 / photons)
    intensity = gaussian_blur(intensity, display.blur_mm / pixel_mm)
    log_signal = -torch.log(intensity) - background
    if display.sharpening > 0:  # edge enhancement at the scale of ribs and vessels
        detail = log_signal - gaussian_blur(log_signal, SHARPEN_MM / pixel_mm)
        log_signal = log_signal + display.sharpening * detail
    return ((log_signal - low) / (high - low)).clamp(0.0, 1.0) ** display.gamma


class Renderer:
    """Renders virtual patients from one prepared anatomy (its tensors are built once)."""

    def __init__(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        self.stack = PlaneStack(anatomy.channels, anatomy.labels)
        # float64 holds the packed counts (< 2**48) exactly; embedding is a fast CPU gather
        self.count_table = torch.tensor(st.structure_count_table(), dtype=torch.float64)[:, None]
        self.skin = skin_map(anatomy)

    def rays(self, patient: Patient, size: int) -> tuple[Projection, RaySamples]:
        projection = plan_projection(self.anatomy, self.skin, patient, size)
        samples = RaySamples(
            projection,
            patient.pose,
            self.skin,
            self.stack,
            self.anatomy.corner,
            self.anatomy.spacing,
        )
        return projection, samples

    def render(self, patient: Patient, size: int) -> Rendered:
        """One radiograph of ``patient``, ``size`` x ``size`` pixels, with its masks."""
        marks = self.anatomy.landmarks
        projection, rays = self.rays(patient, size)
        insert.add_breasts(rays, patient.breasts)
        step = projection.step_lengths()
        bone = rays.bone.sum(-1) * patient.bone_density
        anatomy_line = rays.soft.sum(-1) + bone  # the display window's reference: no findings
        enlarged = None
        if patient.heart_enlargement > 1.0:
            enlarged = insert.enlarge_heart(
                rays, marks["heart_min"], marks["heart_max"], patient.heart_enlargement
            )
        cavity = rays.labels.clone()  # anatomy (and pleural cavities) before the findings
        masks = self.insert_findings(patient, rays)
        if enlarged is not None:
            masks["cardiomegaly"] = enlarged
        counts = self.structure_counts(cavity)
        cartilage = counts[st.CARTILAGE_BYTE].float()
        cartilage = cartilage * self.calcification_pattern(patient, size)
        line = (rays.soft.sum(-1) + bone + cartilage) * step
        anatomy_line = (anatomy_line + cartilage) * step
        for tube in patient.findings.devices:
            tube_line, tube_mask = project_tube(tube, patient.pose, self.skin, projection)
            line = line + tube_line
            masks[tube.kind] |= tube_mask
        exposed = collimated_field(patient.geometry, rays.covered())
        image = detector_image(line, anatomy_line, exposed, patient.display, projection.pixel_mm)
        for byte, name in enumerate(st.ANATOMY_MASKS):
            masks[name] = counts[byte] > 0
        return Rendered(
            image=(image * 65535.0 + 0.5).to(torch.int32).numpy().astype(np.uint16),
            masks={name: masks[name].numpy() for name in MASKS},
            exposed=exposed.numpy(),
        )

    def structure_counts(self, labels: torch.Tensor) -> torch.Tensor:
        """(H, W, D) labels -> (CARTILAGE_BYTE + 1, H, W) samples of each structure per ray."""
        if labels.shape[-1] > 255:
            raise ValueError(f"{labels.shape[-1]} samples per ray overflow the byte counters")
        packed = F.embedding(labels.int(), self.count_table).sum(dim=-2)[..., 0].long()
        shifts = torch.arange(st.CARTILAGE_BYTE + 1) * 8
        return (packed[None] >> shifts[:, None, None]) & 255

    def insert_findings(self, patient: Patient, rays: RaySamples) -> dict[str, torch.Tensor]:
        """Insert every finding into the samples; name -> (H, W) bool projected mask."""
        marks = self.anatomy.landmarks
        findings = patient.findings
        masks = {name: torch.zeros(rays.shape[:2], dtype=torch.bool) for name in FINDINGS}
        if findings.pneumothorax is not None:
            masks["pneumothorax"] = insert.insert_pneumothorax(rays, findings.pneumothorax, marks)
        for effusion in findings.effusions:
            masks["effusion"] |= insert.insert_effusion(
                rays, effusion, marks, supine=patient.view == "AP"
            )
        if findings.consolidation is not None:
            masks["consolidation"] = insert.insert_consolidation(rays, findings.consolidation)
        for nodule in findings.nodules:
            masks["nodule"] |= insert.insert_nodule(rays, nodule)
        return masks

    def calcification_pattern(self, patient: Patient, size: int) -> torch.Tensor:
        """(H, W) attenuation (1/mm) added per cartilage sample: patchy, growing with age."""
        if patient.cartilage_calcification <= 0:
            return torch.zeros(size, size)
        generator = torch.Generator().manual_seed(patient.display.noise_seed + 1)
        coarse = torch.rand(1, 1, 16, 16, generator=generator)
        patches = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        patches = ((patches[0, 0] - 0.4) / 0.6).clamp(0.0, 1.0)
        return patient.cartilage_calcification * 0.6 * MU_WATER * patches
