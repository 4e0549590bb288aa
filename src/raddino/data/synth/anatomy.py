"""A CT prepared for rendering: attenuation channels and labels on a working grid, with landmarks.

Preparation (once per CT and resolution, then cached on disk):

1. read the CT (HU) and label map with nibabel and reorient both to the anatomy frame: axes
   (z, y, x) = toward the feet, toward the back, toward the patient's left;
2. keep the body only (largest connected component above -400 HU, holes filled per slice): the
   table, blankets and cables vanish;
3. undo what is specific to a contrast CT: heart and vessels become blood (<= 45 HU), labelled
   organs lose enhancement (<= 80 HU), unlabelled soft tissue away from the airways is clipped to
   [-150, 80] HU (removes contrast in unlabelled veins and beam-hardening streaks);
4. convert to linear attenuation at a radiographic beam energy: a soft-tissue channel
   ``MU_WATER * (1 + HU / 1000)`` and a bone channel (the part of a bone voxel above 100 HU,
   weighted by ``BONE_GAIN``) that the renderer scales by each patient's bone density;
5. block-average to the working grid (voxels about one detector pixel wide and `depth_step`
   deep: the renderer samples each ray once per voxel depth) and pad with air;
6. trace the skin in polar coordinates, slice by slice (``skin``: centre and radius per angle),
   so that virtual patients can grow or lose subcutaneous fat by a radial warp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raddino.data.synth import structures as st
from raddino.data.synth.source import CtSource, SourceError, sha256_file

MU_WATER = 0.0206
"""Linear attenuation of water at ~60 keV, the effective energy of a chest radiograph (1/mm)."""
BONE_GAIN = 1.8
"""Bone attenuates relatively more at radiographic than at CT energies."""
CHANNELS: tuple[str, ...] = ("soft", "bone", "lung", "heart")
"""The channels of `Anatomy.channels`, in order."""
SKIN_ANGLES = 72
"""Directions of the polar skin trace (every 5 degrees)."""
PAD_MM = 60.0
"""Air added on each side in x and y, room for thicker patients."""
PREP_VERSION = 5


@dataclass
class Anatomy:
    """A CT on the working grid, in the anatomy frame.

    channels: (4, Z, Y, X) float32: soft-tissue attenuation and bone attenuation at bone
    density 1 (1/mm), then the fraction of each voxel that is lung and heart (``CHANNELS``;
    smooth partial-volume boundaries for inserting findings).
    labels: (Z, Y, X) uint8 TotalSegmentator ids.
    skin: (Z, 2 + SKIN_ANGLES) float32: per slice, the body's centre (x, y) and the skin's
    distance from it (mm) at angles ``2 pi a / SKIN_ANGLES`` from +x toward +y.
    Coordinates are in mm with the origin at the centre of the lungs' bounding box; voxel
    (k, j, i) lies at ``corner + (i * dx, j * dy, k * dz)`` in (x, y, z) order.
    """

    channels: np.ndarray
    labels: np.ndarray
    skin: np.ndarray
    spacing: tuple[float, float, float]
    corner: tuple[float, float, float]
    landmarks: dict[str, list[float]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) voxel-centre coordinates, each (3,) in (x, y, z) mm."""
        low = np.asarray(self.corner)
        size = np.asarray(self.shape[::-1]) - 1
        return low, low + size * np.asarray(self.spacing)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) mm (x, y, z) -> (N, 3) integer voxel indices (k, j, i), clipped to the grid."""
        ijk = np.rint((points - np.asarray(self.corner)) / np.asarray(self.spacing)).astype(int)
        ijk = np.clip(ijk, 0, np.asarray(self.shape[::-1]) - 1)
        return ijk[:, ::-1]

    def to_mm(self, kji: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (k, j, i) -> (N, 3) mm (x, y, z)."""
        return np.asarray(self.corner) + kji[:, ::-1] * np.asarray(self.spacing)


def load_ct(source: CtSource) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU (Z, Y, X) float32, labels (Z, Y, X) uint8, spacing (dx, dy, dz); anatomy frame."""
    import nibabel as nib

    errors = _nifti_errors()
    arrays, spacings, affines = [], [], []
    for path in (source.ct, source.labels):
        try:
            image = nib.as_closest_canonical(nib.load(str(path)))  # RAS: +i right, +j front, +k up
            data = np.asarray(image.dataobj, dtype=np.float32)
        except errors as error:
            raise SourceError(f"{path}: cannot read NIfTI volume ({error})") from error
        if data.ndim != 3:
            raise SourceError(f"{path}: expected a 3D volume, found shape {data.shape}")
        arrays.append(np.ascontiguousarray(data[::-1, ::-1, ::-1].transpose(2, 1, 0)))
        spacings.append(tuple(float(s) for s in image.header.get_zooms()[:3]))
        affines.append(image.affine)
    hu, labels = arrays
    if hu.shape != labels.shape or not np.allclose(affines[0], affines[1], atol=1e-2):
        raise SourceError(
            f"{source.labels}: label map grid {labels.shape} does not match the CT "
            f"{source.ct} grid {hu.shape} (both need the same shape and affine)"
        )
    if labels.min() < 0 or labels.max() > 255:
        raise SourceError(f"{source.labels}: label ids must lie in 0..255")
    return hu, np.rint(labels).astype(np.uint8), spacings[0]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: the patient, without table, blankets or cables."""
    from scipy import ndimage

    tissue = ndimage.binary_opening(hu > -400, structure=np.ones((1, 3, 3)), iterations=2)
    components, count = ndimage.label(tissue)
    if count == 0:
        raise SourceError("the CT contains no tissue above -400 HU")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(sizes.argmax())
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def attenuation(hu: np.ndarray, labels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """(2, Z, Y, X) float32 soft-tissue and bone attenuation (1/mm) of a cleaned contrast CT."""
    from scipy import ndimage

    hu = np.clip(hu, -1000.0, 3000.0)
    hu[~body] = -1000.0
    vessels = np.isin(labels, st.VESSELS)
    hu[vessels] = np.minimum(hu[vessels], 45.0)
    bones = ndimage.binary_dilation(np.isin(labels, st.BONES + st.COSTAL_CARTILAGES))
    airways = np.isin(labels, st.LUNG_LEFT + st.LUNG_RIGHT + st.TRACHEA)
    organs = (labels > 0) & ~bones & ~airways
    hu[organs] = np.minimum(hu[organs], 80.0)
    near_airways = ndimage.maximum_filter(airways, size=(1, 23, 23))
    loose = (labels == 0) & body & ~bones
    hu[loose] = np.minimum(hu[loose], 80.0)
    far = loose & ~near_airways
    hu[far] = np.maximum(hu[far], -150.0)
    soft = np.where(bones, np.minimum(hu, 100.0), hu)
    bone = np.where(bones, np.maximum(hu - 100.0, 0.0), 0.0)
    mu = np.empty((2, *hu.shape), dtype=np.float32)
    mu[0] = np.maximum(MU_WATER * (1.0 + soft / 1000.0), 0.0)
    mu[1] = MU_WATER * BONE_GAIN * bone / 1000.0
    return mu


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """(..., Z, Y, X) -> (..., Z // fz, Y // fy, X // fx) averages of whole blocks."""
    fz, fy, fx = factors
    z, y, x = (s // f for s, f in zip(volume.shape[-3:], factors, strict=True))
    cropped = volume[..., : z * fz, : y * fy, : x * fx]
    blocks = cropped.reshape(*volume.shape[:-3], z, fz, y, fy, x, fx)
    return blocks.mean(axis=(-5, -3, -1), dtype=np.float32)


def depth_step(pixel_mm: float) -> float:
    """Ray sampling step (mm) for detector pixels of ~pixel_mm: coarser for smaller images."""
    return min(7.0, max(3.5, 5.0 * pixel_mm))


def trace_skin(anatomy: Anatomy, body: np.ndarray) -> np.ndarray:
    """(Z, 2 + SKIN_ANGLES): body centre (x, y) mm and skin radius per angle, slice by slice."""
    dx, dy, _ = anatomy.spacing
    x0, y0, _ = anatomy.corner
    angles = 2 * np.pi * np.arange(SKIN_ANGLES) / SKIN_ANGLES
    radii = np.arange(0.0, 400.0, 0.5 * min(dx, dy))
    out = np.zeros((body.shape[0], 2 + SKIN_ANGLES), dtype=np.float32)
    for k in range(body.shape[0]):
        j, i = np.nonzero(body[k])
        if len(j) == 0:
            out[k] = out[k - 1] if k else 0.0
            continue
        cx, cy = x0 + i.mean() * dx, y0 + j.mean() * dy
        xs = cx + np.cos(angles)[:, None] * radii
        ys = cy + np.sin(angles)[:, None] * radii
        ii = np.rint((xs - x0) / dx).astype(int)
        jj = np.rint((ys - y0) / dy).astype(int)
        valid = (ii >= 0) & (ii < body.shape[2]) & (jj >= 0) & (jj < body.shape[1])
        inside = np.zeros(valid.shape, dtype=bool)
        inside[valid] = body[k, jj[valid], ii[valid]]
        last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
        out[k, :2] = cx, cy
        out[k, 2:] = np.where(inside.any(axis=1), radii[last], 0.0)
    return out


def working_factors(spacing: tuple[float, float, float], pixel_mm: float) -> tuple[int, int, int]:
    """Block sizes (fz, fy, fx) that make voxels ~pixel_mm wide and ~depth_step deep."""
    dx, dy, dz = spacing
    return (
        max(1, round(pixel_mm / dz)),
        max(1, round(depth_step(pixel_mm) / dy)),
        max(1, round(pixel_mm / dx)),
    )


def prepare_anatomy(source: CtSource, pixel_mm: float) -> Anatomy:
    """Read, clean and resample ``source`` for rendering with detector pixels of ~pixel_mm."""
    hu, labels, spacing = load_ct(source)
    body = body_mask(hu)
    mu = attenuation(hu, labels, body)
    del hu
    occupancy = np.stack(
        [np.isin(labels, st.LUNG_LEFT + st.LUNG_RIGHT), np.isin(labels, st.HEART)]
    ).astype(np.float32)
    mu = np.concatenate([mu, occupancy])
    del occupancy
    factors = working_factors(spacing, pixel_mm)
    mu = block_mean(mu, factors)
    body_small = block_mean(body.astype(np.float32), factors) > 0.5
    z, y, x = body_small.shape
    fz, fy, fx = factors
    labels = labels[fz // 2 :: fz, fy // 2 :: fy, fx // 2 :: fx][:z, :y, :x]
    dx, dy, dz = spacing[0] * fx, spacing[1] * fy, spacing[2] * fz
    py, px = round(PAD_MM / dy), round(PAD_MM / dx)
    pad = ((0, 0), (py, py), (px, px))
    mu = np.pad(mu, ((0, 0), *pad))
    labels = np.pad(labels, pad)
    body_small = np.pad(body_small, pad)
    lungs = np.isin(labels, st.LUNG_LEFT + st.LUNG_RIGHT)
    if not lungs.any():
        raise SourceError(f"{source.labels}: no lung labels (ids 10-14) in the label map")
    index = np.argwhere(lungs)
    centre_index = (index.min(0) + index.max(0)) / 2.0  # (k, j, i)
    corner = tuple(float(-c * s) for c, s in zip(centre_index[::-1], (dx, dy, dz), strict=True))
    anatomy = Anatomy(
        channels=np.ascontiguousarray(mu, dtype=np.float32),
        labels=np.ascontiguousarray(labels),
        skin=np.zeros((0, 2 + SKIN_ANGLES), dtype=np.float32),
        spacing=(dx, dy, dz),
        corner=corner,  # type: ignore[arg-type]
    )
    anatomy.skin = trace_skin(anatomy, body_small)
    anatomy.landmarks = find_landmarks(anatomy, body_small)
    return anatomy


def find_landmarks(anatomy: Anatomy, body: np.ndarray) -> dict[str, list[float]]:
    """Named points and boxes (mm, (x, y, z)) that findings, devices and geometry are built on."""
    labels = anatomy.labels
    marks: dict[str, list[float]] = {}
    boxes = {
        "lung_left": st.LUNG_LEFT,
        "lung_right": st.LUNG_RIGHT,
        "lungs": st.LUNG_LEFT + st.LUNG_RIGHT,
        "heart": st.HEART,
    }
    for name, ids in boxes.items():
        mask = np.isin(labels, ids)
        if not mask.any():
            raise SourceError(f"the label map has no {name.replace('_', ' ')} (ids {ids})")
        points = anatomy.to_mm(np.argwhere(mask))
        marks[f"{name}_min"] = points.min(0).tolist()
        marks[f"{name}_max"] = points.max(0).tolist()
        marks[f"{name}_centre"] = points.mean(0).tolist()
    body_points = anatomy.to_mm(np.argwhere(body))
    marks["body_min"] = body_points.min(0).tolist()
    marks["body_max"] = body_points.max(0).tolist()
    for side, ids in (("left", st.LUNG_LEFT), ("right", st.LUNG_RIGHT)):
        low, high = np.asarray(marks[f"lung_{side}_min"]), np.asarray(marks[f"lung_{side}_max"])
        points = anatomy.to_mm(np.argwhere(np.isin(labels, ids)))
        width, height = high[0] - low[0], high[2] - low[2]
        # the medial quarter of the lung (x grows toward the patient's left)
        medial = (
            points[:, 0] < low[0] + width / 4
            if side == "left"
            else points[:, 0] > high[0] - width / 4
        )
        middle = np.abs(points[:, 2] - (low[2] + 0.55 * height)) < 0.2 * height
        marks[f"hilum_{side}"] = points[medial & middle].mean(0).tolist()
    for name, ids in (
        ("svc", st.SVC),
        ("bcv_left", st.BRACHIOCEPHALIC_VEIN_LEFT),
        ("bcv_right", st.BRACHIOCEPHALIC_VEIN_RIGHT),
    ):
        mask = np.isin(labels, ids)
        if mask.any():
            points = anatomy.to_mm(np.argwhere(mask))
            marks[f"{name}_top"] = points[points[:, 2] <= points[:, 2].min() + 8].mean(0).tolist()
            marks[f"{name}_bottom"] = (
                points[points[:, 2] >= points[:, 2].max() - 8].mean(0).tolist()
            )
    if "svc_top" not in marks:  # no SVC label: put it right of the midline above the heart
        heart_min = marks["heart_min"]
        centre = marks["heart_centre"]
        marks["svc_bottom"] = [centre[0] - 25.0, centre[1], heart_min[2] + 10.0]
        marks["svc_top"] = [centre[0] - 25.0, centre[1], heart_min[2] - 50.0]
    return marks


def cache_key(source: CtSource, pixel_mm: float) -> str:
    """Identifies a prepared anatomy: both files' contents, the working grid and PREP_VERSION."""
    factors = working_factors(_spacing(source.ct), pixel_mm)
    text = json.dumps(
        [sha256_file(Path(source.ct)), sha256_file(Path(source.labels)), factors, PREP_VERSION]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _nifti_errors() -> tuple[type[Exception], ...]:
    """What reading a file that is not a readable NIfTI raises (nibabel's own error for an
    unrecognised or empty file included)."""
    from nibabel.filebasedimages import ImageFileError

    return (OSError, ValueError, EOFError, ImageFileError)


def _spacing(path: Path) -> tuple[float, float, float]:
    """Voxel size (dx, dy, dz) in mm from a NIfTI header, in the anatomy frame: what
    :func:`load_ct` reads, without the voxels.

    Reorienting to RAS loads the whole volume when the file is not RAS already (1.9 s for the
    demo's LAS CT), so the header and affine are reoriented on a one-voxel stand-in.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
        stand_in = type(image)(
            np.zeros((1,) * len(image.shape), np.uint8), image.affine, image.header
        )
        zooms = nib.as_closest_canonical(stand_in).header.get_zooms()
    except _nifti_errors() as error:
        raise SourceError(f"{path}: cannot read NIfTI header ({error})") from error
    dx, dy, dz = (float(s) for s in zooms[:3])
    return dx, dy, dz


def save_anatomy(anatomy: Anatomy, folder: Path) -> None:
    """Write ``folder/{channels,labels}.npy`` and ``meta.json`` atomically (a whole folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "channels.npy", anatomy.channels)
        np.save(tmp / "labels.npy", anatomy.labels)
        np.save(tmp / "skin.npy", anatomy.skin)
        meta = {
            "version": PREP_VERSION,
            "spacing": anatomy.spacing,
            "corner": anatomy.corner,
            "landmarks": anatomy.landmarks,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        with contextlib.suppress(OSError):  # another process prepared the same anatomy first
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_anatomy(folder: Path) -> Anatomy:
    """An anatomy written by `save_anatomy` (arrays memory-mapped copy-on-write)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        channels = np.load(folder / "channels.npy", mmap_mode="c")
        labels = np.load(folder / "labels.npy", mmap_mode="c")
        skin = np.load(folder / "skin.npy")
    except (OSError, ValueError) as error:
        raise SourceError(f"{folder}: cannot read prepared anatomy ({error})") from error
    return Anatomy(
        channels=channels,
        labels=labels,
        skin=skin,
        spacing=tuple(meta["spacing"]),
        corner=tuple(meta["corner"]),
        landmarks=meta["landmarks"],
    )


def cached_anatomy(source: CtSource, pixel_mm: float, cache_dir: Path) -> Path:
    """The folder of the prepared anatomy for ``source`` at ``pixel_mm``, preparing it once."""
    folder = cache_dir / "anatomy" / cache_key(source, pixel_mm)
    if not (folder / "meta.json").is_file():
        save_anatomy(prepare_anatomy(source, pixel_mm), folder)
    return folder
