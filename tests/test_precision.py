"""The precision policy: dtype names parsed once, one ``auto`` rule per device, and the places
that resolve a precision (encoding, evaluation, pre-training, report models) all following it."""

from __future__ import annotations

import pytest
import torch

from raddino import devices
from raddino.precision import (
    DTYPES,
    auto_dtype,
    dtype_name,
    parse_dtype,
    resolve_dtype,
    short_name,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch):
    """Pretend this machine's CPU and GPU do (True) or do not (False) multiply bf16 natively."""

    def force(value: bool) -> None:
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: value)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: value)

    return force


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        (CPU, True, torch.bfloat16),
        (CPU, False, torch.float32),
        (CUDA, True, torch.bfloat16),
        (CUDA, False, torch.float16),
    ],
)
def test_auto_is_bf16_where_native_else_fp16_on_gpus_and_fp32_on_cpus(
    native_bf16, device, native, expected
):
    native_bf16(native)
    assert devices.has_native_bf16(device) is native
    assert auto_dtype(device) == expected
    assert resolve_dtype(None, device) == expected
    assert auto_dtype(device, native_bf16=native) == expected  # the same rule, hardware given


def test_an_explicit_dtype_is_kept_on_every_device(native_bf16):
    native_bf16(False)
    for device in (CPU, CUDA):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert resolve_dtype(dtype, device) == dtype


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("auto", None),
        ("AUTO", None),
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("fp16", torch.float16),
        (" float16 ", torch.float16),
    ],
)
def test_dtype_names_parse_to_torch_dtypes_and_auto_to_none(name, expected):
    assert parse_dtype(name) is expected


def test_names_written_out_read_back():
    for dtype in (None, *DTYPES.values()):
        assert parse_dtype(dtype_name(dtype)) is dtype
    assert dtype_name(None) == "auto" and dtype_name(torch.bfloat16) == "bfloat16"
    assert [short_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == [
        "fp32",
        "bf16",
        "fp16",
    ]


@pytest.mark.parametrize("value", ["int8", "fp8", "", "float64", "half"])
def test_a_bad_name_is_one_line_naming_it_and_the_choices(value):
    with pytest.raises(ValueError) as raised:
        parse_dtype(value)
    message = str(raised.value)
    assert message.startswith(f"dtype {value!r}: choose auto, fp32 (float32), bf16 (bfloat16)")
    assert "\n" not in message


def test_a_dtype_raddino_does_not_compute_in_is_refused():
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype(torch.float64, CPU)


# --------------------------------------------------------------------------- where it is used


def test_encoding_and_evaluation_default_to_float32_and_auto_follows_the_policy(native_bf16):
    from raddino.features.encode import EncodeOptions
    from raddino.models.hardware import Hardware, choose_dtype

    native_bf16(True)
    assert EncodeOptions().dtype == torch.float32
    assert resolve_dtype(EncodeOptions(dtype=None).dtype, CPU) == torch.bfloat16
    old_gpu = Hardware("cuda", "V100", bf16=False, fp16=True, onednn_graph=False, compiler=True)
    assert choose_dtype(None, old_gpu).value == auto_dtype(CUDA, native_bf16=False)


def test_encode_options_take_torch_objects_and_parse_a_device_name_once():
    from raddino.features.encode import EncodeOptions

    options = EncodeOptions(device="auto")
    assert isinstance(options.device, torch.device)
    assert options.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TypeError, match="parse_dtype"):
        EncodeOptions(dtype="bfloat16")
    with pytest.raises(ValueError, match="--device 'mps'"):
        EncodeOptions(device="mps")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_training_auto_follows_the_policy_on_the_cpu(native_bf16, native, expected):
    from raddino.ssl.run import training_precision

    native_bf16(native)
    assert training_precision("auto", CPU) == expected
    assert training_precision("fp32", CPU) == torch.float32
    assert training_precision("bfloat16", CPU) == torch.bfloat16


@pytest.mark.parametrize("name", ["fp16", "float16"])
def test_fp16_training_on_the_cpu_is_refused(name):
    from raddino.ssl.run import training_precision

    with pytest.raises(ValueError, match=r"^train\.precision=fp16 needs a CUDA device"):
        training_precision(name, CPU)


def test_every_config_precision_name_is_a_policy_name():
    from raddino.ssl.config import ConfigError, load_config

    for name in ("auto", *DTYPES):
        assert load_config(None, [f"train.precision={name}"]).train.precision == name
    with pytest.raises(ConfigError, match=r"^train\.precision='fp8': choose auto, fp32"):
        load_config(None, ["train.precision=fp8"])


def test_report_models_compute_in_float32_on_the_cpu_and_in_the_policy_on_gpus(native_bf16):
    from raddino.eval.report_generation.train import compute_dtype

    native_bf16(True)
    for precision in (None, torch.bfloat16, torch.float32):
        assert compute_dtype(precision, CPU) == torch.float32
    assert compute_dtype(None, CUDA) == torch.bfloat16
    native_bf16(False)
    assert compute_dtype(None, CUDA) == torch.float16
    assert compute_dtype(torch.float32, CUDA) == torch.float32


def test_segmentation_heads_autocast_on_gpus_only_in_the_policy(native_bf16):
    from raddino.eval.segment import _autocast_dtype

    native_bf16(False)
    assert _autocast_dtype(CPU, True) is None
    assert _autocast_dtype(CUDA, True) == torch.float16
    assert _autocast_dtype(CUDA, False) is None
    native_bf16(True)
    assert _autocast_dtype(CUDA, True) == torch.bfloat16
