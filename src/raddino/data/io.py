"""Decode chest radiographs (PNG, JPEG, DICOM) into numpy arrays.

`read_image` sniffs the format from the file's content, guards against decompression bombs by
checking the header's width and height before any pixel is decoded, and turns every failure into
an `ImageReadError` subclass that names the file. `to_uint8` applies the RAD-DINO model card's
min-max scaling to whatever `read_image` returns. `read_mask` decodes a segmentation mask the
same way into a bool array.
"""

import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "CorruptImageError",
    "EmptyFileError",
    "ImageReadError",
    "ImageTooLargeError",
    "MaskSizeError",
    "MissingPixelDataError",
    "UnsupportedImageError",
    "is_image_file",
    "pil_to_array",
    "read_image",
    "read_mask",
    "to_uint8",
]

DEFAULT_MAX_PIXELS: int = 20_000 * 20_000
"""Largest width * height `read_image` decodes unless told otherwise."""

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
"""Lower-case file suffixes that a folder scan treats as images."""

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_SUPPORTED = "supported formats are PNG, JPEG and DICOM (.dcm/.dicom)"

# What PIL raises for a file it cannot parse or decode (it never raises a dedicated type).
_PIL_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
# What pydicom raises while parsing or accessing the elements of a malformed file.
_DICOM_PARSE_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    struct.error,
)

# PIL modes whose pixels numpy can take as they are, and the dtype they become.
_PIL_DIRECT_MODES = {
    "L": np.uint8,
    "RGB": np.uint8,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I;16N": np.uint16,
    "F": np.float32,
}
# PIL modes that become grey or RGB through `Image.convert` (when they carry no transparency).
_PIL_CONVERTED_MODES = {
    "1": "L",
    "LA": "L",
    "La": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBA": "RGB",
    "RGBa": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}

_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"}
)
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ImageReadError(Exception):
    """A file could not be turned into pixels; `path` names it and `reason` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fsdecode(path)
        self.reason = reason
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class EmptyFileError(ImageReadError):
    """The file has zero bytes."""


class CorruptImageError(ImageReadError):
    """The file claims a known format but cannot be decoded, or its pixels are not finite."""


class UnsupportedImageError(ImageReadError):
    """The file is valid but uses a format, layout or codec this reader does not handle."""


class MissingPixelDataError(ImageReadError):
    """A DICOM file without a Pixel Data element."""


class ImageTooLargeError(ImageReadError):
    """The header declares more than `max_pixels` pixels; nothing was decoded."""


class MaskSizeError(ImageReadError):
    """A mask whose height and width differ from those of its image."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path`'s suffix (case-insensitive) is one of `IMAGE_SUFFIXES`."""
    return Path(os.fsdecode(path)).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one radiograph into a contiguous array.

    Returns (H, W) for grey or (H, W, 3) for colour images:
    - uint8 for 8-bit PNG/JPEG: 1-bit images become 0/255, palette images RGB, transparency is
      composited onto white (as transformers does), and Pillow reduces 16-bit colour PNGs to
      8-bit RGB;
    - uint16 for 16-bit grey PNG;
    - float32 for DICOM, after the modality LUT and VOI LUT/window, with MONOCHROME1 inverted
      so that bright means dense.
    The format is sniffed from the content; `.dcm`/`.dicom` files without the DICOM preamble
    are force-read. Raises an `ImageReadError` subclass naming the file.
    """
    return _decode(os.fsdecode(path), max_pixels, pil_to_array)


def read_mask(
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a segmentation mask into a bool (H, W) array: True where the pixel is non-zero.

    Any format `read_image` reads, with its checks. A colour pixel is inside when any channel
    is non-zero, and a fully transparent pixel is outside (whatever its colour). ``size``: the
    (H, W) of the mask's image; a mask of another size raises `MaskSizeError`. Every failure is
    an `ImageReadError` subclass whose one-line message names the file.
    """
    name = os.fsdecode(path)
    pixels = _decode(name, max_pixels, _pil_to_mask)
    inside = pixels if pixels.dtype == np.bool_ else pixels != 0
    if inside.ndim == 3:
        inside = inside.any(axis=2)
    if size is not None and inside.shape != tuple(size):
        height, width = inside.shape
        raise MaskSizeError(
            name,
            f"{width}x{height} (WxH) but its image is {size[1]}x{size[0]}; a mask must have the "
            "size of its image",
        )
    return inside


def _decode(name: str, max_pixels: int, convert) -> np.ndarray:
    """Sniff the format and decode; ``convert`` turns a loaded PIL image into an array."""
    head = _read_head(name, _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    if head.startswith(_PNG_SIGNATURE):
        return _read_with_pil(name, PngImagePlugin.PngImageFile, max_pixels, convert)
    if head.startswith(_JPEG_SIGNATURE):
        return _read_with_pil(name, JpegImagePlugin.JpegImageFile, max_pixels, convert)
    if head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC:
        return _read_dicom(name, max_pixels, force=False)
    if Path(name).suffix.lower() in _DICOM_SUFFIXES:
        return _read_dicom(name, max_pixels, force=True)
    raise UnsupportedImageError(name, f"content is not a recognised image; {_SUPPORTED}")


def to_uint8(image: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Min-max scale `image` ((H, W) or (H, W, 3), any real dtype) to uint8 [0, 255], rounded.

    uint8 input is returned unchanged and a constant image becomes zeros. `source` names the
    image in the `CorruptImageError` raised for NaN or infinite values.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.bool_ and not np.issubdtype(image.dtype, np.number):
        raise TypeError(f"{source}: cannot scale an array of dtype {image.dtype} to uint8")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise TypeError(f"{source}: cannot scale a complex array to uint8")
    values = image.astype(np.float64)
    if values.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(values).all():
        raise CorruptImageError(source, "image contains NaN or infinite values")
    low = values.min()
    high = values.max()
    if high == low:
        return np.zeros(image.shape, dtype=np.uint8)
    values -= low
    values *= 255.0 / (high - low)
    return np.rint(values, out=values).astype(np.uint8)


def _read_head(name: str, size: int) -> bytes:
    """The first `size` bytes of the file (fewer if it is shorter); rejects empty files."""
    try:
        with open(name, "rb") as fp:
            head = fp.read(size)
    except FileNotFoundError as error:
        raise ImageReadError(name, "no such file") from error
    except IsADirectoryError as error:
        raise ImageReadError(name, "is a directory, not a file") from error
    except PermissionError as error:
        raise ImageReadError(name, "permission denied") from error
    except OSError as error:
        raise ImageReadError(name, f"cannot read file: {error.strerror or error}") from error
    if not head:
        raise EmptyFileError(name, "file is empty (0 bytes)")
    return head


def _check_pixel_count(name: str, width: int, height: int, max_pixels: int) -> None:
    """Raise `ImageTooLargeError` when width * height exceeds `max_pixels`."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"header declares {width}x{height} = {width * height} pixels, more than the "
            f"limit of {max_pixels} (max_pixels)",
        )


def _read_with_pil(
    name: str,
    image_class: type[ImageFile.ImageFile],
    max_pixels: int,
    convert: Callable[[Image.Image], np.ndarray],
) -> np.ndarray:
    """Decode a PNG or JPEG with the given PIL plugin; ``convert`` makes the array."""
    # The plugin class is used directly (not Image.open) so that the only pixel-count limit is
    # our own `max_pixels` rather than Pillow's process-wide Image.MAX_IMAGE_PIXELS.
    kind = image_class.format
    with open(name, "rb") as fp:
        try:
            image = image_class(fp, name)
        except _PIL_DECODE_ERRORS as error:
            raise CorruptImageError(name, f"unreadable {kind} header: {error}") from error
        with image:
            width, height = image.size
            _check_pixel_count(name, width, height, max_pixels)
            mode = image.mode
            if mode not in _PIL_DIRECT_MODES and mode not in _PIL_CONVERTED_MODES and mode != "I":
                raise UnsupportedImageError(name, f"{kind} pixel mode {mode!r} is not supported")
            try:
                image.load()
            except _PIL_DECODE_ERRORS as error:
                raise CorruptImageError(name, f"cannot decode {kind} data: {error}") from error
            return convert(image)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A loaded PIL image -> (H, W) or (H, W, 3) uint8/uint16 array.

    As transformers' ``convert_to_rgb``: transparency (an alpha band or a palette's transparent
    colour) is composited onto white; other modes go through ``Image.convert``. Grey stays
    single-channel (grey with alpha too); 16-bit grey stays uint16.
    """
    mode = image.mode
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
        return np.ascontiguousarray(rgb[..., 0]) if mode in ("LA", "La") else rgb
    if mode in _PIL_DIRECT_MODES:
        return np.array(image, dtype=_PIL_DIRECT_MODES[mode])
    if mode == "I":
        # 32-bit integer mode: older Pillow gives 16-bit grey PNGs this mode.
        pixels = np.array(image, dtype=np.int64)
        return np.clip(pixels, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    if mode in _PIL_CONVERTED_MODES:
        return np.array(image.convert(_PIL_CONVERTED_MODES[mode]), dtype=np.uint8)
    raise ValueError(f"PIL mode {mode!r} is not supported")


def _pil_to_mask(image: Image.Image) -> np.ndarray:
    """A loaded PIL image -> bool (H, W) or (H, W, C): non-zero and not fully transparent."""
    mode = image.mode
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = np.array(image.convert("RGBA"))
        return (rgba[..., :3] != 0) & (rgba[..., 3:] != 0)
    if mode in _PIL_DIRECT_MODES or mode in ("1", "I"):
        return np.array(image) != 0
    if mode in _PIL_CONVERTED_MODES:
        return np.array(image.convert(_PIL_CONVERTED_MODES[mode])) != 0
    raise ValueError(f"PIL mode {mode!r} is not supported")


def _read_dicom(name: str, max_pixels: int, *, force: bool) -> np.ndarray:
    """Decode a single-frame DICOM file; (H, W) or (H, W, 3) float32 display values."""
    try:
        dataset = pydicom.dcmread(name, force=force)
    except _DICOM_PARSE_ERRORS as error:
        raise CorruptImageError(name, f"not a readable DICOM file: {error}") from error
    if force:
        _check_forced_read(name, dataset)
    try:
        return _dicom_pixels(name, dataset, max_pixels)
    except _DICOM_PARSE_ERRORS as error:
        raise CorruptImageError(name, f"malformed DICOM: {error}") from error


def _check_forced_read(name: str, dataset: FileDataset) -> None:
    """Reject a preamble-less file whose first element is not a known DICOM tag."""
    # Without a preamble pydicom parses any bytes as elements; genuine files start with a
    # standard tag (usually group 0002 or 0008), junk almost never does.
    tags = sorted(dataset.keys())
    if dataset.file_meta:
        tags = sorted(dataset.file_meta.keys()) + tags
    # Group 0000 (DIMSE command elements) never appears in files; zero bytes parse as it.
    if not tags or tags[0].group < 0x0002 or not dictionary_has_tag(tags[0]):
        raise CorruptImageError(name, "not a DICOM file (no DICOM preamble or known elements)")


def _dicom_pixels(name: str, dataset: FileDataset, max_pixels: int) -> np.ndarray:
    """Validate the header, decode the pixels and apply the grey-scale pipeline."""
    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        raise MissingPixelDataError(name, "DICOM file has no Pixel Data element")
    frames = _int_or_none(dataset.get("NumberOfFrames"))
    if frames is not None and frames > 1:
        raise UnsupportedImageError(
            name, f"multi-frame DICOM ({frames} frames) is not supported; split frames first"
        )
    rows = _int_or_none(dataset.get("Rows"))
    columns = _int_or_none(dataset.get("Columns"))
    if rows is None or columns is None:
        raise CorruptImageError(name, "DICOM pixel data without Rows/Columns")
    _check_pixel_count(name, columns, rows, max_pixels)
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME and photometric not in _COLOUR:
        raise UnsupportedImageError(
            name,
            f"photometric interpretation {photometric or '(missing)'!r} is not supported; "
            "expected MONOCHROME1, MONOCHROME2, RGB or YBR_*",
        )
    syntax = _transfer_syntax(dataset)
    _check_decoder(name, syntax)

    try:
        pixels = dataset.pixel_array
    except (*_DICOM_PARSE_ERRORS, RuntimeError, NotImplementedError) as error:
        reason = f"cannot decode DICOM pixel data: {error}{_plugin_hint(syntax)}"
        raise CorruptImageError(name, reason) from error
    if photometric in _MONOCHROME:
        if pixels.ndim != 2:
            raise CorruptImageError(
                name, f"monochrome DICOM decoded to shape {pixels.shape}, expected (rows, columns)"
            )
        values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
        values = np.asarray(values, dtype=np.float32)
        _check_finite(name, values)
        if photometric == "MONOCHROME1":
            # in float64: max + min can pass float32's limit, the inverted values cannot
            high, low = np.float64(values.max()), np.float64(values.min())
            values = (high + low - values.astype(np.float64)).astype(np.float32)
    else:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise CorruptImageError(
                name, f"colour DICOM decoded to shape {pixels.shape}, expected (rows, columns, 3)"
            )
        values = np.asarray(pixels, dtype=np.float32)
        _check_finite(name, values)
    return np.ascontiguousarray(values)


def _check_decoder(name: str, syntax: UID) -> None:
    """Raise `UnsupportedImageError` when a compressed transfer syntax has no usable decoder."""
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise UnsupportedImageError(
            name, f"compressed transfer syntax {syntax.name} is not supported by pydicom"
        ) from error
    if decoder.is_available:
        return
    package = _decoder_package(syntax)
    raise UnsupportedImageError(
        name,
        f"compressed transfer syntax {syntax.name} needs {package!r} "
        "(pip install 'raddino[dicom]')",
    )


def _transfer_syntax(dataset: FileDataset) -> UID:
    """The file's transfer syntax, recorded in its file meta when it had to be inferred."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax:
        return UID(str(syntax))
    # A preamble-less file may lack the file meta group; pydicom still knows how it parsed the
    # elements, and the pixel data of such a file is uncompressed in that encoding.
    implicit_vr, little_endian = dataset.original_encoding
    if little_endian is False:
        syntax = ExplicitVRBigEndian
    elif implicit_vr:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian
    dataset.file_meta.TransferSyntaxUID = syntax
    return syntax


def _plugin_hint(syntax: UID) -> str:
    """Advice appended to a decoding failure when the pylibjpeg plugin could do better."""
    if not syntax.is_compressed or "pylibjpeg" in get_decoder(syntax).available_plugins:
        return ""
    return (
        f"; if the file is valid, installing {_decoder_package(syntax)!r} may help "
        "(pip install 'raddino[dicom]')"
    )


def _decoder_package(syntax: UID) -> str:
    """The pylibjpeg plugin that decodes `syntax`."""
    if syntax in JPEG2000TransferSyntaxes:
        return "pylibjpeg-openjpeg"
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        return "pylibjpeg-libjpeg"
    if syntax in RLETransferSyntaxes:
        return "pylibjpeg-rle"
    return "pylibjpeg"


def _int_or_none(value: int | str | None) -> int | None:
    """An integer header value (IS/US), or None when absent or empty."""
    if value is None or value == "":
        return None
    return int(value)


def _check_finite(name: str, values: np.ndarray) -> None:
    """Raise `CorruptImageError` when any pixel is NaN or infinite."""
    if not np.isfinite(values).all():
        raise CorruptImageError(name, "pixel values contain NaN or infinity")
