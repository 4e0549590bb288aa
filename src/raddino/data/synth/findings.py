"""Findings of a virtual patient: what is present, where, how large; sampled from the anatomy.

Every finding lives in the source-anatomy frame (mm, x toward the patient's left, y toward the
back, z toward the feet), so the patient's deformation carries it along. Sizes and contrasts are
chosen to be visible at 128-224 px, the resolution of the demo: nodules 20-35 mm (masses 35-60
mm) of soft tissue in aerated lung, effusions from a blunted costophrenic angle to half a
hemithorax, pneumothoraces from a 10% to a 50% collapse, dense lobar consolidations 8-14 cm
across, radio-opaque tubes and lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raddino.data.synth import structures as st
from raddino.data.synth.anatomy import Anatomy

FINDINGS: tuple[str, ...] = (
    "nodule",
    "effusion",
    "pneumothorax",
    "consolidation",
    "cardiomegaly",
    "chest_tube",
    "central_line",
)
"""Finding label columns of the manifest (1 present, 0 absent); also lesion mask names."""
DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.2,
    "effusion": 0.2,
    "pneumothorax": 0.15,
    "consolidation": 0.2,
    "cardiomegaly": 0.2,
    "chest_tube": 0.12,
    "central_line": 0.15,
}
SIDES = ("left", "right")


@dataclass(frozen=True)
class Nodule:
    """A lobulated soft-tissue sphere: radius varies with direction by ``lobulation``.

    lobulation: (K, 4) rows (dx, dy, dz, amplitude): radius *= 1 + sum amp * (dir . d)^2 - mean.
    """

    centre: tuple[float, float, float]
    radius_mm: float
    hu: float
    lobe: str
    lobulation: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Effusion:
    """Pleural fluid filling the dependent ``fraction`` of one hemithorax's height (or depth)."""

    side: str
    fraction: float
    meniscus_mm: float


@dataclass(frozen=True)
class Pneumothorax:
    """The lung shrinks by ``collapse`` (< 1) toward ``centre``; air fills the space it leaves."""

    side: str
    collapse: float
    centre: tuple[float, float, float]


@dataclass(frozen=True)
class Consolidation:
    """Airspace opacity within one lobe: a fuzzy ball of ``density`` (0-1 of soft tissue)."""

    lobe: str
    centre: tuple[float, float, float]
    radius_mm: float
    density: float


@dataclass(frozen=True)
class Tube:
    """A device: a tube along ``path`` (K, 3) anatomy mm, from outside the body to its tip.

    Its cross-section is an annulus (``outer_mm``, ``inner_mm``) of attenuation ``wall_mu``
    (1/mm) with, for chest tubes, a radio-opaque stripe of line integral ``stripe``.
    """

    kind: str
    side: str
    path: np.ndarray = field(repr=False)
    outer_mm: float
    inner_mm: float
    wall_mu: float
    stripe: float


@dataclass(frozen=True)
class Findings:
    nodules: tuple[Nodule, ...] = ()
    effusions: tuple[Effusion, ...] = ()
    pneumothorax: Pneumothorax | None = None
    consolidation: Consolidation | None = None
    cardiomegaly: bool = False
    devices: tuple[Tube, ...] = ()

    def labels(self) -> dict[str, int]:
        """Finding name -> 1/0, in FINDINGS order."""
        kinds = {tube.kind for tube in self.devices}
        present = {
            "nodule": bool(self.nodules),
            "effusion": bool(self.effusions),
            "pneumothorax": self.pneumothorax is not None,
            "consolidation": self.consolidation is not None,
            "cardiomegaly": self.cardiomegaly,
            "chest_tube": "chest_tube" in kinds,
            "central_line": "central_line" in kinds,
        }
        return {name: int(present[name]) for name in FINDINGS}


def lung_ids(side: str) -> tuple[int, ...]:
    return st.LUNG_LEFT if side == "left" else st.LUNG_RIGHT


def _mark(anatomy: Anatomy, name: str) -> np.ndarray:
    return np.asarray(anatomy.landmarks[name], dtype=float)


def sample_nodule(anatomy: Anatomy, rng: np.random.Generator) -> Nodule:
    """A nodule (or, one time in four, a mass) fully inside aerated lung, projecting off the
    heart, great vessels and spine (up to 200 tries, then the last candidate)."""
    mass = rng.random() < 0.25
    radius = rng.uniform(17.5, 30.0) if mass else rng.uniform(10.0, 17.5)
    labels = anatomy.labels
    lungs = np.isin(labels, st.LUNG_LEFT + st.LUNG_RIGHT)
    candidates = np.argwhere(lungs)
    # keep nodules where an expert would see them: off the heart, great vessels and spine
    hidden = np.isin(labels, st.VESSELS + st.VERTEBRAE).any(axis=1)  # (Z, X)
    lung_depth = lungs.sum(axis=1) * anatomy.spacing[1]  # (Z, X) mm of lung along the beam
    for _ in range(200):
        k, j, i = candidates[rng.integers(len(candidates))]
        centre = anatomy.to_mm(np.array([[k, j, i]]))[0]
        offsets = np.array([[a, 0, 0] for a in (-1, 1)] + [[0, 0, a] for a in (-1, 1)])
        offsets = np.concatenate([offsets, [[0, 1, 0], [0, -1, 0]]]) * (radius + 4.0)
        ring = anatomy.to_index(centre + offsets)
        label = int(labels[k, j, i])
        side = "left" if label in st.LUNG_LEFT else "right"
        hilum = _mark(anatomy, f"hilum_{side}")
        if (
            abs(centre[0] - hilum[0]) > 35.0
            and np.all(labels[ring[:, 0], ring[:, 1], ring[:, 2]] == label)
            and not hidden[k, i]
            and lung_depth[k, i] > 2.5 * radius + 30.0
        ):
            break
    lobe = next((name for name, value in st.LOBES.items() if value == label), "lung")
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    amplitudes = rng.uniform(0.0, 0.35 if mass else 0.2, size=(3, 1))
    return Nodule(
        centre=tuple(centre.tolist()),
        radius_mm=float(radius),
        hu=float(rng.uniform(20.0, 80.0)),
        lobe=lobe,
        lobulation=np.concatenate([directions, amplitudes], axis=1),
    )


def sample_consolidation(anatomy: Anatomy, rng: np.random.Generator) -> Consolidation:
    """Lower lobes are the likeliest; the centre is a random voxel of the lobe."""
    names = list(st.LOBES)
    weights = np.array([0.15, 0.25, 0.15, 0.15, 0.30])  # LUL, LLL, RUL, RML, RLL
    lobe = names[rng.choice(len(names), p=weights)]
    voxels = np.argwhere(anatomy.labels == st.LOBES[lobe])
    centre = anatomy.to_mm(voxels[rng.integers(len(voxels))][None])[0]
    return Consolidation(
        lobe=lobe,
        centre=tuple(centre.tolist()),
        radius_mm=float(rng.uniform(40.0, 70.0)),
        density=float(rng.uniform(0.85, 1.0)),
    )


def catmull_rom(points: np.ndarray, step_mm: float = 3.0) -> np.ndarray:
    """(K, 3) control points -> (M, 3) points every ~step_mm along a smooth curve through them."""
    padded = np.concatenate([points[:1], points, points[-1:]])
    out = []
    for a in range(len(points) - 1):
        p0, p1, p2, p3 = padded[a : a + 4]
        n = max(2, int(np.linalg.norm(p2 - p1) / step_mm))
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        out.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    out.append(points[-1:])
    return np.concatenate(out)


def sample_chest_tube(anatomy: Anatomy, side: str, rng: np.random.Generator) -> Tube:
    """Enters the lateral chest wall low (5th-7th intercostal space), tip toward the apex."""
    low, high = _mark(anatomy, f"lung_{side}_min"), _mark(anatomy, f"lung_{side}_max")
    outward = 1.0 if side == "left" else -1.0
    lateral_x = high[0] if side == "left" else low[0]
    z_entry = low[2] + rng.uniform(0.5, 0.65) * (high[2] - low[2])
    y_mid = 0.5 * (low[1] + high[1]) + rng.uniform(-25.0, 25.0)
    entry = np.array([lateral_x - outward * rng.uniform(5.0, 20.0), y_mid, z_entry])
    tip = np.array(
        [
            lateral_x - outward * rng.uniform(35.0, 75.0),
            y_mid + rng.uniform(-30.0, 30.0),
            low[2] + rng.uniform(20.0, 55.0),
        ]
    )
    bend = entry + 0.45 * (tip - entry) + np.array([outward * rng.uniform(0.0, 25.0), 0.0, 0.0])
    outside = entry + np.array([outward * 90.0, 0.0, rng.uniform(40.0, 90.0)])
    wall = entry + np.array([outward * 35.0, 0.0, rng.uniform(5.0, 15.0)])
    path = catmull_rom(np.stack([outside, wall, entry, bend, tip]))
    outer = rng.uniform(3.5, 5.0)
    return Tube(
        kind="chest_tube",
        side=side,
        path=path,
        outer_mm=float(outer),
        inner_mm=float(outer - rng.uniform(0.9, 1.4)),
        wall_mu=float(rng.uniform(1.3, 1.8) * 0.0206),
        stripe=float(rng.uniform(0.8, 1.2)),
    )


def sample_central_line(anatomy: Anatomy, rng: np.random.Generator) -> Tube:
    """Right internal jugular or left subclavian catheter, tip at the cavoatrial junction."""
    svc_top, svc_bottom = _mark(anatomy, "svc_top"), _mark(anatomy, "svc_bottom")
    tip = svc_bottom + np.array([0.0, 0.0, rng.uniform(-15.0, 10.0)])
    top_z = anatomy.corner[2]
    if rng.random() < 0.6 or "bcv_left_top" not in anatomy.landmarks:
        side = "right"
        neck = np.array([svc_top[0] - rng.uniform(5.0, 25.0), svc_top[1] - 10.0, top_z - 60.0])
        via = [_mark(anatomy, "bcv_right_top")] if "bcv_right_top" in anatomy.landmarks else []
        controls = [neck, *via, svc_top, tip]
    else:
        side = "left"
        lateral = _mark(anatomy, "lung_left_max")[0]
        bcv_top, bcv_bottom = _mark(anatomy, "bcv_left_top"), _mark(anatomy, "bcv_left_bottom")
        arm = np.array([lateral + 40.0, bcv_top[1] - 20.0, bcv_top[2] + rng.uniform(-30.0, 0.0)])
        under_clavicle = np.array([0.5 * (lateral + bcv_top[0]), bcv_top[1] - 10.0, bcv_top[2]])
        controls = [arm, under_clavicle, bcv_top, bcv_bottom, svc_top, tip]
    radius = rng.uniform(0.8, 1.2)
    return Tube(
        kind="central_line",
        side=side,
        path=catmull_rom(np.stack(controls)),
        outer_mm=float(radius),
        inner_mm=0.0,
        wall_mu=float(rng.uniform(0.2, 0.3)),
        stripe=0.0,
    )


def sample_findings(
    anatomy: Anatomy, prevalence: dict[str, float], supine: bool, rng: np.random.Generator
) -> Findings:
    """Draw each finding independently with its prevalence, then its size and location."""
    present = {name: bool(rng.random() < prevalence.get(name, 0.0)) for name in FINDINGS}
    nodules = ()
    if present["nodule"]:
        nodules = tuple(sample_nodule(anatomy, rng) for _ in range(1 + int(rng.random() < 0.2)))
    effusions = ()
    if present["effusion"]:
        sides = SIDES if rng.random() < 0.3 else (SIDES[rng.integers(2)],)
        effusions = tuple(
            Effusion(
                side=side,
                fraction=float(rng.choice([rng.uniform(0.06, 0.15), rng.uniform(0.15, 0.5)])),
                meniscus_mm=float(rng.uniform(20.0, 55.0)),
            )
            for side in sides
        )
    pneumothorax = None
    if present["pneumothorax"]:
        side = SIDES[rng.integers(2)]
        hilum = _mark(anatomy, f"hilum_{side}")
        low, high = _mark(anatomy, f"lung_{side}_min"), _mark(anatomy, f"lung_{side}_max")
        # collapse toward a point low and medial: the gap opens at the apex and laterally
        z = low[2] + rng.uniform(0.7, 0.85) * (high[2] - low[2])
        centre = (hilum[0], hilum[1] - (40.0 if supine else 0.0), z)
        pneumothorax = Pneumothorax(
            side=side,
            collapse=float(rng.uniform(0.5, 0.88)),
            centre=tuple(float(c) for c in centre),
        )
    consolidation = sample_consolidation(anatomy, rng) if present["consolidation"] else None
    devices: list[Tube] = []
    if present["chest_tube"]:
        sick = [e.side for e in effusions] + ([pneumothorax.side] if pneumothorax else [])
        side = sick[0] if sick else SIDES[rng.integers(2)]
        devices.append(sample_chest_tube(anatomy, side, rng))
    if present["central_line"]:
        devices.append(sample_central_line(anatomy, rng))
    return Findings(
        nodules=nodules,
        effusions=effusions,
        pneumothorax=pneumothorax,
        consolidation=consolidation,
        cardiomegaly=present["cardiomegaly"],
        devices=tuple(devices),
    )
