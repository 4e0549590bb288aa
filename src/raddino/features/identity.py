"""What identifies an encoder's features store: the model's weights by content, not by path.

A store's meta holds ``model_sha256``, the :func:`weights_sha256` of the model it was written
with, and ``model_path``, the path (or name) the model was given as. Only the hash is compared on
resuming, with the rest of the settings (preprocessing, precision, tokens, layers): the same
weights resume a store whether they are named ``tiny``, ``../tiny``, ``/abs/tiny`` or converted to
another file format; other weights are refused in one line naming both models.

Stores written before the hash (their meta names the model by ``model``, the path alone) still
load as before. They resume when given the very path they were written with, as they always
did; another path is refused with that path in the message.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from raddino.features.store import FeatureStoreWriter, StoreMismatchError

__all__ = [
    "MODEL_HASH_KEY",
    "MODEL_PATH_KEY",
    "describe_model",
    "open_encoder_store",
    "weights_sha256",
]

MODEL_HASH_KEY = "model_sha256"
MODEL_PATH_KEY = "model_path"
LEGACY_MODEL_KEY = "model"  # stores written before the hash: the path only, compared

_SHOWN_HASH = 12  # hex digits of the hash in messages


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 (hex) of a model's state dict: each entry's name, dtype, shape and bytes, in
    name order, with floating-point tensors taken in float32.

    Float32 makes the hash a property of the weights' values, whatever precision holds them
    and whichever file format they were read from. The encoder hashes the model as it runs,
    after casting it: a model run in bf16 is identified by its bf16 values, the same whether it
    was loaded in float32 and cast or cast already by an earlier encode (which casts in place).
    Costs one pass over the weights (0.5 s for ViT-B on 2 cores).
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        tensor = tensor.cpu().contiguous()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def describe_model(meta: dict) -> str:
    """``'PATH' (sha256 0123456789ab)`` for a store's meta (the path alone for an old store)."""
    if MODEL_HASH_KEY in meta:
        path = meta.get(MODEL_PATH_KEY) or "<unnamed>"
        return f"{path!r} (sha256 {str(meta[MODEL_HASH_KEY])[:_SHOWN_HASH]})"
    return (
        f"{meta.get(LEGACY_MODEL_KEY, '<unset>')!r} (no weights hash: written by an older raddino)"
    )


def legacy_meta(meta: dict) -> dict:
    """``meta`` as a store written before the hash holds it: the model named by its path."""
    rest = {k: v for k, v in meta.items() if k not in (MODEL_HASH_KEY, MODEL_PATH_KEY)}
    return {LEGACY_MODEL_KEY: meta.get(MODEL_PATH_KEY, ""), **rest}


def open_encoder_store(out_dir: str | Path, meta: dict, shard_size: int) -> FeatureStoreWriter:
    """A writer for an encoder's store whose ``meta`` identifies the model by
    :data:`MODEL_HASH_KEY` (compared) and :data:`MODEL_PATH_KEY` (information only).

    A store of other weights is refused with one line naming both models. A store written
    before the hash resumes when ``meta``'s path is the one it was written with (its meta
    stays as it is); otherwise it is refused, naming that path.
    """
    try:
        return FeatureStoreWriter(out_dir, meta, shard_size, info_keys=(MODEL_PATH_KEY,))
    except StoreMismatchError as error:
        stored = error.stored
        if stored is None or MODEL_HASH_KEY not in error.differing:
            raise
        others = [
            k
            for k in error.differing
            if k not in (MODEL_HASH_KEY, MODEL_PATH_KEY, LEGACY_MODEL_KEY)
        ]
        also = f"; other settings differ too: {', '.join(others)}" if others else ""
        if MODEL_HASH_KEY in stored:
            raise StoreMismatchError(
                f"features store {out_dir} holds features of another model: written with "
                f"{describe_model(stored)}, given {describe_model(meta)}{also}. Use another "
                "output directory, or the model it was written with.",
                stored=stored,
                differing=error.differing,
            ) from None
        if stored.get(LEGACY_MODEL_KEY) == meta.get(MODEL_PATH_KEY):
            return FeatureStoreWriter(out_dir, legacy_meta(meta), shard_size)
        raise StoreMismatchError(
            f"features store {out_dir} was written by an older raddino, which identified the "
            f"model by its path {stored.get(LEGACY_MODEL_KEY, '<unset>')!r}, not its weights; "
            f"given {meta.get(MODEL_PATH_KEY, '')!r}{also}. Resume it with --model exactly "
            "as written there, or encode into a new directory.",
            stored=stored,
            differing=error.differing,
        ) from None
