"""The IU X-ray (Open-i) reports with their MeSH annotations, from the torchxrayvision wheel.

A test-only resource: the wheel is fetched with ``pip download`` into ``$RADDINO_TEST_CACHE``
(default ``~/.cache/raddino/test-resources``; the dataset tests use the same wheel) and never
committed. Run ``python -m tests.eval.report_generation.iu_xray`` to print the labeller's
agreement table that ``docs/report_generation.md`` quotes.
"""

from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from tests.resources import XRV_VERSION, cache_dir, torchxrayvision_wheel

MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"

# our finding -> MeSH headings (the part before the first '/') that mean it
MESH: dict[str, tuple[str, ...]] = {
    "atelectasis": ("Pulmonary Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "consolidation": ("Consolidation", "Airspace Disease"),
    "edema": ("Pulmonary Edema", "Pulmonary Congestion"),
    "pleural effusion": ("Pleural Effusion",),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "lung opacity": ("Opacity", "Infiltrate", "Density"),
    "nodule": ("Nodule", "Mass"),
    "emphysema": ("Emphysema", "Pulmonary Emphysema", "Pulmonary Disease, Chronic Obstructive"),
    "fracture": ("Fractures, Bone",),
    "granuloma": ("Calcified Granuloma", "Granuloma", "Granulomatous Disease"),
    "hernia": ("Hernia, Hiatal",),
    "scoliosis": ("Scoliosis",),
    "support devices": (
        "Catheters, Indwelling",
        "Implanted Medical Device",
        "Surgical Instruments",
        "Medical Device",
        "Tube, Inserted",
        "Stents",
    ),
}


def fetch_reports_archive() -> Path:
    """``NLMCXR_reports.tgz``; raises RuntimeError when the wheel cannot be downloaded."""
    target = cache_dir() / f"torchxrayvision-{XRV_VERSION}-NLMCXR_reports.tgz"
    if target.is_file():
        return target
    wheel = torchxrayvision_wheel()
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    tmp_file = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp_file.write_bytes(data)
    os.replace(tmp_file, target)
    return target


def read_reports(archive: Path) -> list[tuple[str, set[str]]]:
    """(findings + impression text, MeSH major headings) of every report with text."""
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            parts = [
                (node.text or "").strip()
                for node in root.iter("AbstractText")
                if node.get("Label") in ("FINDINGS", "IMPRESSION")
            ]
            text = " ".join(p for p in parts if p)
            if not text:
                continue
            headings = {(m.text or "").split("/")[0].strip() for m in root.iter("major")}
            reports.append((re.sub(r"\s+", " ", text), headings))
    return reports


def agreement(reports: list[tuple[str, set[str]]]) -> dict[str, dict[str, float]]:
    """Per finding: the labeller's positives against the MeSH annotations (P, R, F1, support)."""
    from raddino.eval.report_generation.labeller import POSITIVE, label_report

    names = list(MESH)
    labels = [label_report(text, names) for text, _ in reports]
    table = {}
    for name in names:
        ours = np.array([lab[name] == POSITIVE for lab in labels])
        mesh = np.array([bool(headings & set(MESH[name])) for _, headings in reports])
        tp, fp, fn = (ours & mesh).sum(), (ours & ~mesh).sum(), (~ours & mesh).sum()
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        table[name] = {
            "precision": float(p),
            "recall": float(r),
            "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
            "support": int(mesh.sum()),
            "predicted": int(ours.sum()),
        }
    return table


if __name__ == "__main__":
    rows = read_reports(fetch_reports_archive())
    result = agreement(rows)
    print(f"{len(rows)} reports with text")
    print("| finding | MeSH support | labelled positive | precision | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for finding, s in result.items():
        print(
            f"| {finding} | {s['support']} | {s['predicted']} | {s['precision']:.3f} "
            f"| {s['recall']:.3f} | {s['f1']:.3f} |"
        )
