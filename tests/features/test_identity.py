"""A features store is keyed on its model's weights: :func:`weights_sha256`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raddino.features.identity import weights_sha256
from raddino.models.encoder import RadDino


def small_module() -> nn.Module:
    module = nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.copy_(torch.arange(6.0).reshape(2, 3) / 4)
        module.bias.copy_(torch.tensor([-1.0, 0.5]))
    module.register_buffer("steps", torch.tensor([7], dtype=torch.int64))
    return module


def test_the_hash_is_stable_across_versions():
    # Stores written earlier are resumed only if this value never changes: a change of the
    # recipe (names, dtypes, shapes, float32 bytes, in name order) must be deliberate.
    expected = "bbc0e6493d458d73025900ff12297d919826d8fe631099ffb8efa19c03c489de"
    assert weights_sha256(small_module()) == expected


def test_the_hash_follows_the_values_not_the_storage_precision():
    module = small_module()
    assert weights_sha256(module.double()) == weights_sha256(small_module())  # exact in float32
    with torch.no_grad():
        module.bias[1] += 2**-20
    assert weights_sha256(module) != weights_sha256(small_module())


def test_the_names_are_part_of_the_hash():
    a, b = nn.Sequential(small_module()), nn.Sequential(nn.Identity(), small_module())
    assert weights_sha256(a) != weights_sha256(b)  # "0.weight" and "1.weight": same values


def test_one_model_loaded_twice_hashes_the_same(small_hf_dir: Path):
    first, second = RadDino.from_pretrained(small_hf_dir), RadDino.from_pretrained(small_hf_dir)
    assert weights_sha256(first) == weights_sha256(second)
    assert len(weights_sha256(first)) == 64


def test_a_model_cast_by_an_earlier_encode_resumes_its_store(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path
):
    # encode_to_store casts the model in place: an evaluation that encodes twice with one model
    # object (bf16) hashes the cast weights both times, as a freshly loaded model cast to bf16
    from raddino.features.encode import EncodeOptions, encode_to_store

    options = EncodeOptions(num_workers=0, dtype=torch.bfloat16, progress=False)
    images = sorted(str(p) for p in image_folder.iterdir())
    model = RadDino.from_pretrained(small_hf_dir)
    encode_to_store(model, images[:1], tmp_path / "store", options)
    assert next(model.parameters()).dtype == torch.bfloat16
    encode_to_store(model, images[:2], tmp_path / "store", options)
    fresh = RadDino.from_pretrained(small_hf_dir)
    assert encode_to_store(fresh, images[:3], tmp_path / "store", options).encoded == 3
