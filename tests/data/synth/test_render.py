"""Rendered radiographs look like chest radiographs; findings and masks are where they belong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from raddino.data.synth import insert
from raddino.data.synth import structures as st
from raddino.data.synth.findings import FINDINGS
from raddino.data.synth.patient import Patient
from raddino.data.synth.render import MASKS, Renderer, gaussian_blur
from tests.data.synth.conftest import SIZE, make_patient

SEEDS = (1, 2, 3)


def image_of(renderer: Renderer, patient: Patient) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rendered = renderer.render(patient, SIZE)
    return rendered.image.astype(np.float64) / 65535.0, rendered.masks


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


def without(patient: Patient, finding: str) -> Patient:
    """The same patient (same pose, exposure and noise) without ``finding``."""
    findings = patient.findings
    if finding == "cardiomegaly":
        return dataclasses.replace(
            patient,
            heart_enlargement=1.0,
            findings=dataclasses.replace(findings, cardiomegaly=False),
        )
    emptied = {
        "nodule": {"nodules": ()},
        "effusion": {"effusions": ()},
        "pneumothorax": {"pneumothorax": None},
        "consolidation": {"consolidation": None},
        "chest_tube": {"devices": ()},
        "central_line": {"devices": ()},
    }[finding]
    return dataclasses.replace(patient, findings=dataclasses.replace(findings, **emptied))


def test_render_returns_a_16_bit_image_and_every_mask(renderer: Renderer) -> None:
    rendered = renderer.render(make_patient(renderer, 0), SIZE)
    assert rendered.image.shape == (SIZE, SIZE) and rendered.image.dtype == np.uint16
    assert set(rendered.masks) == set(MASKS)
    assert all(m.shape == (SIZE, SIZE) and m.dtype == bool for m in rendered.masks.values())
    assert rendered.image.max() > 60000 and rendered.image.min() < 5000  # full dynamic range


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_patients_left_is_on_the_image_right(renderer: Renderer, view: str) -> None:
    _, masks = image_of(renderer, make_patient(renderer, 4, view=view))
    columns = np.arange(SIZE)[None, :]
    left = columns[masks["left_lung"].any(0, keepdims=True)].mean()
    right = columns[masks["right_lung"].any(0, keepdims=True)].mean()
    heart = np.nonzero(masks["heart"])[1].mean()
    assert right < SIZE / 2 < left
    assert heart > SIZE / 2  # the heart lies mostly in the patient's left chest


@pytest.mark.parametrize("seed", SEEDS)
def test_lungs_are_darker_than_mediastinum_and_spine(renderer: Renderer, seed: int) -> None:
    image, masks = image_of(renderer, make_patient(renderer, seed))
    lungs = masks["left_lung"] | masks["right_lung"]
    lung_only = lungs & ~masks["heart"]
    rows = np.nonzero(lung_only.any(1))[0]
    left_edge = np.nonzero(masks["right_lung"].any(0))[0].max()  # inner edges of the lungs
    right_edge = np.nonzero(masks["left_lung"].any(0))[0].min()
    middle = (left_edge + right_edge) // 2
    spine = np.zeros_like(lungs)
    spine[rows.min() : rows.max(), middle - 2 : middle + 3] = True
    spine &= ~lungs
    assert image[lung_only].mean() + 0.1 < image[masks["heart"] & ~lungs].mean()
    assert image[lung_only].mean() + 0.2 < image[spine].mean()


def detrend(profile: np.ndarray, window: int) -> np.ndarray:
    padded = np.pad(profile, window // 2, mode="edge")
    return profile - np.convolve(padded, np.ones(window) / window, mode="valid")


def test_ribs_are_periodic_bright_bands(renderer: Renderer) -> None:
    """Down the lateral lung, brightness rises and falls with the path length through ribs."""
    ribs_byte = list(st.ANATOMY_MASKS).index("ribs")
    correlations, periods = [], []
    for seed in range(1, 6):
        patient = make_patient(renderer, seed)
        image, masks = image_of(renderer, patient)
        _, rays = renderer.rays(patient, SIZE)
        rib_path = renderer.structure_counts(rays.labels)[ribs_byte].numpy().astype(float)
        lung = masks["right_lung"] & ~masks["heart"]
        columns = np.nonzero(lung.any(0))[0]
        column = columns.min() + (columns.max() - columns.min()) // 4  # lateral quarter
        band = slice(column - 1, column + 2)
        rows = np.nonzero(lung[:, band].all(1))[0]
        rows = rows[: int(0.65 * len(rows))]  # aerated lung above the diaphragm
        pixel_mm = patient.geometry.field_mm / SIZE
        window = max(3, round(15.0 / pixel_mm) | 1)
        brightness = detrend(image[rows, band].mean(1), window)
        ribs = detrend(rib_path[rows, band].mean(1), window)
        correlations.append(np.corrcoef(brightness, ribs)[0, 1])
        power = np.abs(np.fft.rfft(ribs * np.hanning(len(ribs))))[1:]
        periods.append(len(ribs) * pixel_mm / (1 + int(power.argmax())))
    assert np.median(correlations) > 0.3 and min(correlations) > 0.0, correlations
    assert 12.0 <= np.median(periods) <= 45.0, periods  # rib spacing, in mm


@pytest.mark.parametrize("seed", SEEDS)
def test_lung_masks_align_with_the_lateral_lung_borders(renderer: Renderer, seed: int) -> None:
    """Row by row, the steepest dark-to-bright step at the chest wall lies within 2 px of the
    mask's lateral edge. (Medially and below, projected lungs reach behind the heart and the
    liver, so darkness does not mark those borders.)"""
    rendered = renderer.render(make_patient(renderer, seed), SIZE)
    image = rendered.image / 65535.0
    measured = 0
    for side, outward in (("right_lung", -1), ("left_lung", 1)):
        mask = rendered.masks[side]
        rows = np.nonzero(mask.any(1))[0]
        height = rows.max() - rows.min()
        offsets = []
        for row in range(rows.min() + int(0.25 * height), rows.min() + int(0.6 * height)):
            columns = np.nonzero(mask[row])[0]
            edge = columns.max() if outward > 0 else columns.min()
            low, high = edge - 6, edge + 7
            if low < 1 or high > SIZE - 2 or not rendered.exposed[row, low:high].all():
                continue  # the border is outside the image or collimated
            step = (image[row, low + 1 : high + 1] - image[row, low - 1 : high - 1]) * outward
            offsets.append(low + int(step.argmax()) - edge)
        if len(offsets) >= 10:
            measured += 1
            assert abs(np.median(offsets)) <= 2, (side, offsets)
    assert measured >= 1


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_pixels_only_inside_its_mask(renderer: Renderer, finding: str) -> None:
    patient = make_patient(renderer, 11, prevalence={finding: 1.0})
    assert patient.findings.labels()[finding] == 1
    image, masks = image_of(renderer, patient)
    plain, plain_masks = image_of(renderer, without(patient, finding))
    mask = masks[finding]
    assert mask.any() and not plain_masks[finding].any()
    region = mask
    if finding == "pneumothorax":  # the collapsed lung also changes, within its lung field
        region = mask | masks["left_lung"] | masks["right_lung"]
    change = np.abs(image - plain)
    inside = dilate(region, 2)
    assert change[inside].sum() >= 0.97 * change.sum()
    assert change[~inside].max() < 0.02
    assert change[mask].max() > 0.1  # visible: a tenth of the grey range somewhere in the mask


def test_older_bones_are_less_dense(renderer: Renderer) -> None:
    """Age lowers bone density: ribs stand out less (brightness per mm of rib, fine detail)."""
    patient = make_patient(renderer, 5)
    _, rays = renderer.rays(patient, SIZE)
    ribs = renderer.structure_counts(rays.labels)[list(st.ANATOMY_MASKS).index("ribs")]
    ribs = ribs.float().numpy()

    def high_pass(image: np.ndarray) -> np.ndarray:
        return image - gaussian_blur(torch.tensor(image, dtype=torch.float32), 4.0).numpy()

    slopes = []
    for density in (1.15, 0.7):
        rendered = renderer.render(dataclasses.replace(patient, bone_density=density), SIZE)
        masks = rendered.masks
        lung = (masks["left_lung"] | masks["right_lung"]) & ~masks["heart"] & rendered.exposed
        detail, rib_detail = high_pass(rendered.image / 65535.0)[lung], high_pass(ribs)[lung]
        slopes.append(np.cov(detail, rib_detail)[0, 1] / rib_detail.var())
    assert slopes[0] > 1.1 * slopes[1] > 0


def test_rendering_is_deterministic(renderer: Renderer) -> None:
    patient = make_patient(renderer, 7, prevalence={name: 0.5 for name in FINDINGS})
    first, second = renderer.render(patient, SIZE), renderer.render(patient, SIZE)
    assert np.array_equal(first.image, second.image)
    assert all(np.array_equal(first.masks[k], second.masks[k]) for k in MASKS)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_central_line_thinner_than_a_pixel_projects_as_one_unbroken_line(
    renderer: Renderer, seed: int
) -> None:
    """The line (2 mm across, pixels ~3 mm) is averaged over each pixel's area: its mask is one
    8-connected piece inside the field and it darkens every pixel of it, instead of dashes where
    it passes between pixel centres."""
    from scipy import ndimage

    patient = make_patient(renderer, seed, prevalence={"central_line": 1.0})
    image, masks = image_of(renderer, patient)
    plain, _ = image_of(renderer, without(patient, "central_line"))
    mask = masks["central_line"] & (plain < 0.999)  # inside the exposed field
    _, pieces = ndimage.label(mask, structure=np.ones((3, 3)))
    assert mask.sum() > 20 and pieces == 1
    # most of it visibly (the rest: pixels the line only grazes, or where the window saturates)
    assert (np.abs(image - plain)[mask] > 0.005).mean() > 0.85


@pytest.mark.parametrize("seed", SEEDS)
def test_a_nodule_shadow_does_not_depend_on_where_the_depth_planes_fall(
    renderer: Renderer, seed: int
) -> None:
    """Moving a nodule by a fraction of the step between depth planes (several mm at demo sizes,
    more than its hard edge) leaves its shadow's peak within a few percent. With a margin
    narrower than the step the peak jumps by up to a quarter (a whole sample enters or leaves),
    and across the image those jumps draw concentric rings."""
    patient = make_patient(renderer, seed, prevalence={"nodule": 1.0})
    nodule = patient.findings.nodules[0]
    projection, rays = renderer.rays(patient, SIZE)
    step = projection.plane_step_mm
    assert step > 2 * insert.EDGE_MM  # coarse planes: the case that drew rings
    before = rays.soft.clone()
    peaks = []
    for fraction in np.linspace(0.0, 1.0, 8, endpoint=False):
        x, y, z = nodule.centre
        rays.soft = before.clone()
        insert.insert_nodule(
            rays, dataclasses.replace(nodule, centre=(x, float(y + fraction * step), z))
        )
        peaks.append(float((rays.soft - before).sum(-1).max()))
    assert (max(peaks) - min(peaks)) / np.mean(peaks) < 0.05, peaks


@pytest.mark.parametrize("tilt", [0.0, 0.5, 1.2])
def test_a_boundary_adds_up_to_the_depth_inside_wherever_it_falls_between_samples(
    tilt: float,
) -> None:
    """Samples every ``step`` mm along a ray through a plane boundary (tilted by ``tilt``
    radians) add up to the length of ray inside it, wherever the boundary falls between two
    samples: no terraces."""
    spacing = 7.0
    normal = torch.tensor([np.sin(tilt), np.cos(tilt), 0.0], dtype=torch.float64)
    step = torch.tensor([0.0, spacing, 0.0], dtype=torch.float64).expand(21, 3)
    depth = torch.arange(-10, 11, dtype=torch.float64) * spacing  # sample positions on the ray
    for boundary in np.linspace(-spacing, spacing, 29):  # where the ray crosses the boundary
        distance = (boundary - depth) * normal[1]  # signed distance, > 0 before the boundary
        inside = insert.ramp(distance, normal.expand(21, 3), step).sum() * spacing
        assert float(inside) == pytest.approx(boundary + 10.5 * spacing, abs=1e-9)
