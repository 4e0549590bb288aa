"""Pairs, the report tokenizer and the pair stream."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raddino.contrastive.data import PairStream, collate_pairs, read_pairs
from raddino.contrastive.tokenizer import (
    CLS,
    PAD,
    SEP,
    ReportTokens,
    encode_report,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from raddino.data.manifest import ManifestError
from raddino.ssl.config import CropSection
from tests.contrastive.conftest import write_manifest

CROPS = CropSection(global_size=32, global_scale=(0.6, 1.0), max_source_size=96)


def reports_of(manifest: Path) -> list[str]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return [row["report"] for row in csv.DictReader(handle)]


def test_a_manifest_without_reports_is_refused_in_one_line_naming_it(tmp_path: Path):
    manifest = write_manifest(tmp_path / "images.csv", [{"path": "a.png", "split": "train"}])
    with pytest.raises(ManifestError) as caught:
        read_pairs([manifest])
    message = str(caught.value)
    assert "\n" not in message
    assert str(manifest) in message and "no 'report' column" in message


def test_a_folder_is_refused(tmp_path: Path):
    with pytest.raises(ManifestError, match="give manifest CSVs with 'path' and 'report'"):
        read_pairs([tmp_path])


def test_pairs_skip_empty_reports_and_repeated_paths(pair_manifest: Path, tmp_path: Path):
    rows = [
        {"path": str(pair_manifest.parent / "images/00.png"), "report": "Left effusion."},
        {"path": str(pair_manifest.parent / "images/01.png"), "report": "  "},
        {"path": str(pair_manifest.parent / "images/00.png"), "report": "Another report."},
    ]
    pairs = read_pairs([write_manifest(tmp_path / "m.csv", rows)])
    assert pairs.reports == ["Left effusion."] and pairs.skipped_empty == 1
    assert pairs.paths == [rows[0]["path"]]


def test_tokenizer_wraps_pads_and_truncates(pair_manifest: Path):
    tokenizer = train_tokenizer(reports_of(pair_manifest), vocab_size=200, max_length=16)
    ids = tokenizer.encode("There is a left-sided nodule.")
    assert ids.tokens[0] == CLS and ids.tokens[ids.tokens.index(SEP) - 1] == "."
    assert len(ids.ids) == 16 and ids.tokens[-1] == PAD
    assert ids.attention_mask == [1] * (ids.tokens.index(SEP) + 1) + [0] * (
        15 - ids.tokens.index(SEP)
    )
    long = tokenizer.encode(" ".join(reports_of(pair_manifest)))
    assert len(long.ids) == 16 and long.tokens[-1] == SEP and 0 not in long.attention_mask
    assert tokenizer.get_vocab_size() <= 200


def test_tokenizer_is_saved_as_json_and_reads_back(pair_manifest: Path, tmp_path: Path):
    tokenizer = train_tokenizer(reports_of(pair_manifest), vocab_size=200, max_length=16)
    path = save_tokenizer(tokenizer, tmp_path)
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    again = load_tokenizer(tmp_path)
    text = reports_of(pair_manifest)[3]
    assert again.encode(text).ids == tokenizer.encode(text).ids


def test_report_tokens_equal_encoding_each_read(pair_manifest: Path):
    reports = reports_of(pair_manifest)
    tokenizer = train_tokenizer(reports, vocab_size=200, max_length=16)
    tokens = ReportTokens(tokenizer, reports)
    for _ in range(2):  # the first read encodes, the second reads the stored row
        for index in (3, 0, 3, len(reports) - 1):
            ids, mask = tokens[index]
            expected_ids, expected_mask = encode_report(tokenizer, reports[index])
            assert ids.dtype == mask.dtype == torch.long
            assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    assert tokens.encoded.sum() == len({3, 0, len(reports) - 1})
    ids[:] = -1  # a caller writing into what it got does not change the store
    assert torch.equal(tokens[len(reports) - 1][0], expected_ids)


def test_report_tokens_need_a_fixed_length(pair_manifest: Path):
    tokenizer = train_tokenizer(reports_of(pair_manifest), vocab_size=200, max_length=16)
    tokenizer.no_padding()
    with pytest.raises(ValueError, match="fixed length"):
        ReportTokens(tokenizer, ["a report"])


TRAIN_IN_A_PROCESS = """
import csv, sys
from raddino.contrastive.tokenizer import train_tokenizer
with open(sys.argv[1], newline="", encoding="utf-8") as handle:
    reports = [row["report"] for row in csv.DictReader(handle)]
print(train_tokenizer(reports, vocab_size=120, max_length=24).to_str())
"""


def test_tokenizer_training_is_deterministic_across_processes(pair_manifest: Path):
    # tokenizers' WordPiece trainer is not (hash-map order); its BPE trainer must be
    outputs = [
        subprocess.run(
            [sys.executable, "-c", TRAIN_IN_A_PROCESS, str(pair_manifest)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["model"]["merges"]  # merges were learnt


def test_pair_stream_is_a_function_of_the_sample_number(pair_manifest: Path):
    pairs = read_pairs([pair_manifest])
    tokenizer = train_tokenizer(pairs.reports, vocab_size=200, max_length=24)
    stream = PairStream(pairs, CROPS, seed=3, global_batch=4, tokenizer=tokenizer)
    view, ids, mask = stream[13]
    assert view.shape == (3, 32, 32) and ids.shape == mask.shape == (24,)
    other = PairStream(pairs, CROPS, seed=3, global_batch=4, tokenizer=tokenizer)
    other[2]
    again = other[13]
    assert torch.equal(view, again[0]) and torch.equal(ids, again[1])
    index, _ = stream.load_indexed(13)
    assert ids.tolist() == tokenizer.encode(pairs.reports[index]).ids
    batch = collate_pairs([stream[g] for g in range(4)])
    assert batch.images.shape == (4, 3, 32, 32) and batch.input_ids.shape == (4, 24)


def test_an_unreadable_image_is_replaced_together_with_its_report(
    pair_manifest: Path, tmp_path: Path
):
    pairs = read_pairs([pair_manifest])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    pairs.paths[5] = str(broken)
    tokenizer = train_tokenizer(pairs.reports, vocab_size=200, max_length=24)
    stream = PairStream(pairs, CROPS, seed=0, global_batch=4, tokenizer=tokenizer)
    g = int((stream.order(0) == 5).nonzero())
    index, _ = stream.load_indexed(g)
    assert index != 5 and index == int(stream.order(0)[(g + 1) % len(pairs.paths)])
    assert stream[g][1].tolist() == tokenizer.encode(pairs.reports[index]).ids


def test_pair_stream_from_the_image_cache_gives_the_views_of_decoding(
    pair_manifest: Path, tmp_path: Path
):
    from raddino.ssl.image_cache import open_or_build

    pairs = read_pairs([pair_manifest])
    tokenizer = train_tokenizer(pairs.reports, vocab_size=200, max_length=24)
    cache = open_or_build(pairs.paths, CROPS.max_source_size, tmp_path, workers=0, progress=False)
    cached = PairStream(pairs, CROPS, seed=5, global_batch=4, tokenizer=tokenizer, images=cache)
    decoding = PairStream(pairs, CROPS, seed=5, global_batch=4, tokenizer=tokenizer)
    for g in range(2 * len(pairs.paths)):  # two epochs
        for got, expected in zip(cached[g], decoding[g], strict=True):
            assert torch.equal(got, expected)
