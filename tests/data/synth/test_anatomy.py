"""The anatomy cache key's voxel size: read from the header, equal to what loading reads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from raddino.data.synth.anatomy import _spacing, load_ct
from raddino.data.synth.source import CtSource, SourceError


def canonical_zooms(path: Path) -> tuple[float, ...]:
    """The reference: reorient the whole volume to RAS, as ``load_ct`` does."""
    return tuple(
        float(z) for z in nib.as_closest_canonical(nib.load(str(path))).header.get_zooms()[:3]
    )


def test_the_source_ct_spacing_equals_the_reoriented_volumes(source: CtSource) -> None:
    assert nib.aff2axcodes(nib.load(str(source.ct)).affine) != (
        "R",
        "A",
        "S",
    )  # a real reorientation
    assert _spacing(source.ct) == canonical_zooms(source.ct)


@pytest.mark.parametrize(
    "columns",
    [
        [(0, 0.7), (1, 0.8), (2, 2.5)],  # RAS already
        [(0, -0.7), (1, 0.8), (2, 2.5)],  # LAS, like the demo's CT
        [(2, 0.7), (1, 0.8), (0, -2.5)],  # SAL: axes swapped
        [(1, -0.6), (2, 3.0), (0, 0.9)],  # every axis moved
    ],
)
def test_anisotropic_voxels_follow_the_axis_permutation(
    columns: list[tuple[int, float]], tmp_path: Path
) -> None:
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel_axis, (world_axis, size) in enumerate(columns):
        affine[world_axis, voxel_axis] = size
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine), str(path))
    spacing = _spacing(path)
    assert spacing == canonical_zooms(path)
    sizes = {world_axis: abs(size) for world_axis, size in columns}
    assert spacing == pytest.approx([sizes[0], sizes[1], sizes[2]], rel=1e-6)  # float32 header


@pytest.mark.parametrize("content", [b"", b"not a nifti file"])
def test_an_unreadable_file_names_itself(content: bytes, tmp_path: Path, source: CtSource) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=r"broken\.nii\.gz: cannot read NIfTI header"):
        _spacing(path)
    with pytest.raises(SourceError, match=r"broken\.nii\.gz: cannot read NIfTI volume"):
        load_ct(CtSource(ct=path, labels=source.labels))
