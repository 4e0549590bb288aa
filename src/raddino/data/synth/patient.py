"""A virtual patient: hidden attributes, body, positioning, projection and exposure, findings.

Everything random about one image is drawn here, from one ``numpy`` generator, into a frozen
`Patient`; rendering is then a pure function of (anatomy, patient, image size). Hidden attributes
change the image but never the report:

- ``age`` lowers bone density (``bone_density``) and calcifies costal cartilage;
- ``bmi`` thickens (or thins) the subcutaneous fat (``Pose.fat_mm``), enlarges the body and
  lifts the diaphragm;
- ``sex``: female patients have breast shadows and, on average, a smaller frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raddino.data.synth.anatomy import Anatomy
from raddino.data.synth.deform import Pose
from raddino.data.synth.findings import Findings, sample_findings


@dataclass(frozen=True)
class Geometry:
    """Projection geometry (mm). The detector is perpendicular to y; the central ray hits it at
    (``centre_x``, ``centre_z``), where the square field of side ``field_mm`` is centred.

    ``collimation``: fractions of the field (top, bottom, left, right) shielded by the
    collimator.
    """

    view: str
    sid_mm: float
    parallel: bool
    detector_gap_mm: float
    field_mm: float
    centre_x: float
    centre_z: float
    collimation: tuple[float, float, float, float]


@dataclass(frozen=True)
class Display:
    """Detector and processing: photons per mm^2 of unattenuated beam, blur (mm), large-scale
    equalisation (0: none, 1: full), edge enhancement (gain), the window (percentiles of the
    body's line integrals shown as black and white) and the tone curve."""

    photons_per_mm2: float
    blur_mm: float
    equalization: float
    sharpening: float
    window_low_pct: float
    window_high_pct: float
    gamma: float
    noise_seed: int


@dataclass(frozen=True)
class Breast:
    """Soft tissue on the front of the chest (anatomy mm); see `insert.add_breasts`."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float


@dataclass(frozen=True)
class Patient:
    patient_id: str
    age: int
    sex: str
    bmi: float
    pose: Pose
    heart_enlargement: float
    bone_density: float
    cartilage_calcification: float
    breasts: tuple[Breast, ...]
    geometry: Geometry
    display: Display
    findings: Findings

    @property
    def view(self) -> str:
        return self.geometry.view


@dataclass(frozen=True)
class CohortOptions:
    """What varies across the cohort and how often (see `sample_patient`)."""

    prevalence: dict[str, float]
    ap_fraction: float = 0.25
    sid_pa_mm: float = 1800.0
    sid_ap_mm: float = 1000.0
    parallel_beam: bool = False


def _clip_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float):
    return float(np.clip(rng.normal(mean, sd), low, high))


def sample_pose(
    anatomy: Anatomy, sex: str, bmi: float, supine: bool, rng: np.random.Generator
) -> Pose:
    """Positioning, habitus, inspiration and a smooth random deformation."""
    heart_low = np.asarray(anatomy.landmarks["heart_min"])
    heart_high = np.asarray(anatomy.landmarks["heart_max"])
    frame = 1.04 if sex == "M" else 0.96
    heavy = 1.0 + 0.006 * (bmi - 25.0)
    scale = (
        _clip_normal(rng, frame * heavy, 0.06, 0.82, 1.25),
        _clip_normal(rng, frame * heavy, 0.07, 0.82, 1.3),
        _clip_normal(rng, frame, 0.05, 0.85, 1.15),
    )
    inspiration = _clip_normal(rng, -12.0 if supine else 0.0, 15.0, -40.0, 35.0)
    inspiration -= 0.8 * max(bmi - 30.0, 0.0)
    lungs_low = np.asarray(anatomy.landmarks["lungs_min"])
    lungs_high = np.asarray(anatomy.landmarks["lungs_max"])
    low, high = anatomy.extent()
    amplitude = rng.uniform(4.0, 11.0)
    field = rng.normal(size=(3, 5, 4, 5))
    field = field / field.std() * amplitude
    field[:, :, :, :] -= field.mean(axis=(1, 2, 3), keepdims=True)
    return Pose(
        rotation_deg=(
            _clip_normal(rng, 0.0, 4.0, -10.0, 10.0),
            _clip_normal(rng, 0.0, 2.5, -7.0, 7.0),
            _clip_normal(rng, 0.0, 3.5, -9.0, 9.0),
        ),
        translation_mm=(rng.normal(0.0, 8.0), 0.0, rng.normal(0.0, 8.0)),
        scale=scale,
        inspiration_mm=float(inspiration),
        apex_z=float(lungs_low[2]),
        dome_z=float(lungs_low[2] + 0.85 * (lungs_high[2] - lungs_low[2])),
        fat_mm=float(np.clip(2.2 * (bmi - 23.0) + rng.normal(0.0, 3.0), -8.0, 50.0)),
        fat_gradient=float(rng.uniform(0.0, 0.6)),
        fat_centre_z=float(0.5 * (lungs_low[2] + lungs_high[2])),
        heart_centre=tuple(float(c) for c in (heart_low + heart_high) / 2),  # type: ignore[arg-type]
        heart_radius=float(np.max(heart_high - heart_low) / 2),
        heart_scale=_clip_normal(rng, 1.02, 0.05, 0.9, 1.14),
        heart_shift=(rng.normal(0.0, 6.0), rng.normal(0.0, 4.0), rng.normal(0.0, 6.0)),
        elastic_mm=field.astype(np.float32),
        elastic_low=tuple(low.tolist()),
        elastic_high=tuple(high.tolist()),
    )


def front_skin_y(anatomy: Anatomy, x: float, z: float) -> float:
    """y (mm) of the anterior skin at (x, z), from the polar skin trace."""
    skin = anatomy.skin
    k = int(np.clip(round((z - anatomy.corner[2]) / anatomy.spacing[2]), 0, len(skin) - 1))
    cx, cy, radii = skin[k, 0], skin[k, 1], skin[k, 2:]
    angles = 2 * np.pi * np.arange(len(radii)) / len(radii)
    front = np.sin(angles) < 0  # toward -y, the patient's front
    xs = cx + radii * np.cos(angles)
    best = np.argmin(np.where(front, np.abs(xs - x), np.inf))
    return float(cy + radii[best] * np.sin(angles[best]))


def sample_breasts(anatomy: Anatomy, bmi: float, rng: np.random.Generator) -> tuple[Breast, ...]:
    """Two breasts on the anterior chest wall over the lower lung zones."""
    low = np.asarray(anatomy.landmarks["lungs_min"])
    high = np.asarray(anatomy.landmarks["lungs_max"])
    size = rng.uniform(0.75, 1.15) * (1.0 + 0.015 * (bmi - 25.0))
    z = low[2] + rng.uniform(0.5, 0.7) * (high[2] - low[2])
    offset = rng.uniform(0.4, 0.55) * 0.5 * (high[0] - low[0])
    out = []
    for sign in (-1.0, 1.0):
        x = 0.5 * (low[0] + high[0]) + sign * offset + rng.normal(0.0, 4.0)
        zb = z + rng.normal(0.0, 4.0)
        radii = (rng.uniform(35.0, 50.0) * size, rng.uniform(25.0, 45.0) * size, 42.0 * size)
        centre_y = front_skin_y(anatomy, x, zb) + 0.35 * radii[1]
        out.append(
            Breast(
                centre=(float(x), centre_y, float(zb)),
                radii=tuple(float(r) for r in radii),  # type: ignore[arg-type]
                hu=float(rng.uniform(-80.0, -10.0)),
            )
        )
    return tuple(out)


def sample_geometry(
    anatomy: Anatomy, options: CohortOptions, view: str, pose: Pose, rng: np.random.Generator
) -> Geometry:
    """PA (upright, long SID) or AP (supine/portable, short SID); framing and collimation.

    The field is 1.15-1.45 times the lungs' projected size and starts near the top of the CT
    (which ends just above the lung apices), so the image's upper edge or the collimator's upper
    blade is close to the apices, as in a tightly collimated radiograph.
    """
    low = np.asarray(anatomy.landmarks["lungs_min"])
    high = np.asarray(anatomy.landmarks["lungs_max"])
    lungs = 0.5 * (low + high)
    extent = max(high[0] - low[0], high[2] - low[2]) * (pose.scale[0] + pose.scale[2]) / 2
    if view == "PA":
        sid = options.sid_pa_mm * rng.uniform(0.85, 1.03)
        gap = rng.uniform(10.0, 40.0)
        magnification = 1.08
    else:
        sid = options.sid_ap_mm * rng.uniform(0.9, 1.1)
        gap = rng.uniform(30.0, 80.0)
        magnification = 1.3
    if options.parallel_beam:
        magnification = 1.0
    field = extent * magnification * rng.uniform(1.15, 1.45)
    ct_top = anatomy.corner[2] * pose.scale[2] + pose.translation_mm[2]
    centre_z = ct_top + (field / 2 - rng.uniform(-10.0, 20.0)) / magnification
    return Geometry(
        view=view,
        sid_mm=float(sid),
        parallel=options.parallel_beam,
        detector_gap_mm=float(gap),
        field_mm=float(field),
        centre_x=float(lungs[0] * pose.scale[0] + rng.normal(0.0, 12.0)),
        centre_z=float(centre_z),
        collimation=tuple(float(c) for c in rng.uniform(0.0, 0.07, size=4)),  # type: ignore[arg-type]
    )


def sample_patient(
    anatomy: Anatomy, options: CohortOptions, patient_id: str, rng: np.random.Generator
) -> Patient:
    """One virtual patient: every random choice of one image.

    ``heart_enlargement`` (> 1 with cardiomegaly) grows the heart itself into its surroundings
    (`raddino.data.synth.insert.enlarge_heart`); the pose's heart zoom is normal variation.
    """
    age = int(np.clip(rng.normal(58.0, 17.0), 18, 95))
    sex = "F" if rng.random() < 0.5 else "M"
    bmi = float(np.clip(np.exp(rng.normal(np.log(26.0), 0.18)), 16.0, 48.0))
    view = "AP" if rng.random() < options.ap_fraction else "PA"
    supine = view == "AP"
    pose = sample_pose(anatomy, sex, bmi, supine, rng)
    findings = sample_findings(anatomy, options.prevalence, supine, rng)
    density = 1.12 - 0.006 * (age - 25) - (0.004 * max(age - 50, 0) if sex == "F" else 0.0)
    calcification = np.clip((age - 35.0) / 45.0, 0.0, 1.0) ** 1.5 * rng.uniform(0.5, 1.2)
    return Patient(
        patient_id=patient_id,
        age=age,
        sex=sex,
        bmi=round(bmi, 1),
        pose=pose,
        heart_enlargement=float(rng.uniform(1.22, 1.45)) if findings.cardiomegaly else 1.0,
        bone_density=float(np.clip(density + rng.normal(0.0, 0.05), 0.55, 1.3)),
        cartilage_calcification=float(calcification),
        breasts=sample_breasts(anatomy, bmi, rng) if sex == "F" else (),
        geometry=sample_geometry(anatomy, options, view, pose, rng),
        display=Display(
            photons_per_mm2=float(np.exp(rng.uniform(np.log(2e4), np.log(3e5)))),
            blur_mm=float(rng.uniform(0.3, 0.8)),
            equalization=float(rng.uniform(0.2, 0.6)),
            sharpening=float(rng.uniform(0.5, 1.5)),
            window_low_pct=float(rng.uniform(0.2, 3.0)),
            window_high_pct=float(rng.uniform(98.5, 99.9)),
            gamma=float(rng.uniform(0.75, 1.35)),
            noise_seed=int(rng.integers(2**62)),
        ),
        findings=findings,
    )
