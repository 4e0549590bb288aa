"""Behaviour of raddino.data.io on real files written to a temporary folder."""

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from raddino.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    CorruptImageError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    MaskSizeError,
    MissingPixelDataError,
    UnsupportedImageError,
    is_image_file,
    read_image,
    read_mask,
    to_uint8,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def dicom_dataset(
    pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None
) -> Dataset:
    """A minimal single-image dataset holding `pixels` ((H, W) or (H, W, 3), uint8/uint16)."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    if pixels is None:
        return ds
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def add_file_meta(ds: Dataset, transfer_syntax: UID = ExplicitVRLittleEndian) -> None:
    """Give `ds` the file meta group a DICOM file needs."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax


def save_dicom(ds: Dataset, path: Path, *, transfer_syntax: UID = ExplicitVRLittleEndian) -> Path:
    """Write `ds` as a DICOM file with preamble and file meta group."""
    add_file_meta(ds, transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def save_compressed_junk_dicom(path: Path, transfer_syntax: UID) -> Path:
    """A 16x16 grey DICOM whose encapsulated frame is junk bytes under `transfer_syntax`."""
    ds = dicom_dataset(np.zeros((16, 16), dtype=np.uint16))
    ds.PixelData = encapsulate([b"\x00junk-not-a-codestream\x00" * 4])
    ds["PixelData"].VR = "OB"
    return save_dicom(ds, path, transfer_syntax=transfer_syntax)


def names(path: Path) -> str:
    """A `pytest.raises(match=...)` pattern requiring the file name in the error message."""
    return re.escape(path.name)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC-32 over type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- PNG / JPEG -------------------------------------------------------------------------------


def test_grey_8bit_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9), dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous
    np.testing.assert_array_equal(image, pixels)


def test_grey_16bit_png_reads_as_exact_uint16(tmp_path: Path) -> None:
    pixels = np.array([[0, 1, 255, 256], [4095, 30000, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, pixels)


def test_rgb_png_reads_as_hw3_uint8(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, pixels)


def white_composite(pixels: np.ndarray) -> np.ndarray:
    """Colour (H, W, C) with alpha last, composited onto white, computed by hand in float."""
    alpha = pixels[..., -1:].astype(np.float64) / 255
    return pixels[..., :-1] * alpha + 255 * (1 - alpha)


def test_rgba_png_is_composited_on_white_like_transformers(tmp_path: Path) -> None:
    from transformers.image_transforms import convert_to_rgb

    pixels = np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    image = read_image(path)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(image, convert_to_rgb(opened, return_numpy=True))
    assert np.abs(image - white_composite(pixels)).max() <= 1.0


def test_grey_alpha_png_is_composited_on_white_and_stays_hw(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (4, 5, 2), dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(pixels, mode="LA").save(path)
    image = read_image(path)
    assert image.shape == (4, 5)
    assert image.dtype == np.uint8
    assert np.abs(image - white_composite(pixels)[..., 0]).max() <= 1.0


def test_opaque_rgba_keeps_its_colours(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    path = tmp_path / "opaque.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_image(path), pixels[..., :3])


def test_palette_png_expands_to_rgb(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 3))
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    palette_image.putdata([0, 1, 2, 1] * 3)
    path = tmp_path / "palette.png"
    palette_image.save(path)
    image = read_image(path)
    assert image.shape == (3, 4, 3)
    assert image.dtype == np.uint8
    with Image.open(path) as expected:
        np.testing.assert_array_equal(image, np.asarray(expected.convert("RGB")))
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])


def test_one_bit_png_becomes_uint8_0_and_255(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[True, False], [False, True]])).save(path)
    image = read_image(path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, [[255, 0], [0, 255]])


def test_grey_jpeg_reads_as_hw_uint8(tmp_path: Path) -> None:
    path = tmp_path / "grey.jpg"
    Image.fromarray(np.full((8, 10), 128, dtype=np.uint8)).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (8, 10)
    assert image.dtype == np.uint8


def test_rgb_jpeg_reads_as_hw3_uint8(tmp_path: Path) -> None:
    path = tmp_path / "colour.jpeg"
    Image.fromarray(np.full((8, 10, 3), 200, dtype=np.uint8)).save(path)
    image = read_image(path)
    assert image.shape == (8, 10, 3)
    assert image.dtype == np.uint8


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(path)
    image = read_image(path)
    assert image.shape == (4, 6, 3)
    with Image.open(path) as expected:
        np.testing.assert_array_equal(image, np.asarray(expected.convert("RGB")))


def test_format_is_detected_from_content_not_suffix(tmp_path: Path) -> None:
    path = tmp_path / "actually_a_png.jpg"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(path, format="PNG")
    np.testing.assert_array_equal(read_image(path), np.arange(12).reshape(3, 4))


def test_truncated_png_raises_corrupt_image_error(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    noise = np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=names(path)):
        read_image(path)


def test_empty_file_raises_empty_file_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(EmptyFileError, match=names(path)):
        read_image(path)


def test_missing_file_raises_image_read_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    with pytest.raises(ImageReadError, match=names(path)) as caught:
        read_image(path)
    assert caught.value.reason == "no such file"
    assert caught.value.path == str(path)


def test_unknown_content_raises_unsupported_listing_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "scan.gif"
    Image.new("L", (4, 4)).save(path, format="GIF")
    with pytest.raises(UnsupportedImageError, match=names(path)) as caught:
        read_image(path)
    assert all(kind in str(caught.value) for kind in ("PNG", "JPEG", "DICOM"))


def test_image_over_max_pixels_raises_too_large(tmp_path: Path) -> None:
    path = tmp_path / "ten_by_ten.png"
    Image.new("L", (10, 10)).save(path)
    with pytest.raises(ImageTooLargeError, match=names(path)):
        read_image(path, max_pixels=99)
    assert read_image(path, max_pixels=100).shape == (10, 10)


def test_bomb_header_is_refused_before_any_decoding(tmp_path: Path) -> None:
    # A PNG whose valid IHDR claims 100000 x 100000 pixels but has no image data at all:
    # decoding would fail, so ImageTooLargeError proves the guard ran on the header alone.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b""))
    assert DEFAULT_MAX_PIXELS < 100_000 * 100_000
    with pytest.raises(ImageTooLargeError, match=names(path)):
        read_image(path)


# --- DICOM ------------------------------------------------------------------------------------


def test_dicom_monochrome2_applies_rescale_slope_and_intercept_exactly(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 1000], [2048, 40000, 65535]], dtype=np.uint16)
    ds = dicom_dataset(stored)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    image = read_image(save_dicom(ds, tmp_path / "rescaled.dcm"))
    assert image.dtype == np.float32
    assert image.shape == (2, 3)
    np.testing.assert_array_equal(image, stored.astype(np.float64) * 2 - 1024)


def test_dicom_without_luts_keeps_stored_values(tmp_path: Path) -> None:
    stored = np.array([[0, 7], [4095, 12]], dtype=np.uint16)
    image = read_image(save_dicom(dicom_dataset(stored, bits_stored=12), tmp_path / "plain.dcm"))
    np.testing.assert_array_equal(image, stored)


def test_dicom_monochrome1_is_inverted_so_bright_is_dense(tmp_path: Path) -> None:
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    ds = dicom_dataset(stored, photometric="MONOCHROME1")
    image = read_image(save_dicom(ds, tmp_path / "mono1.dcm"))
    np.testing.assert_array_equal(image, [[300, 200], [100, 0]])


def test_dicom_window_center_and_width_follow_the_linear_formula(tmp_path: Path) -> None:
    stored = np.array([[50, 80, 100], [120, 124, 200]], dtype=np.uint16)
    ds = dicom_dataset(stored, bits_stored=12)
    ds.WindowCenter = 100
    ds.WindowWidth = 51
    image = read_image(save_dicom(ds, tmp_path / "windowed.dcm"))
    # PS3.3 C.11.2.1.2.1 with c=100, w=51 and output range [0, 2**12 - 1].
    c, w, y_min, y_max = 100.0, 51.0, 0.0, 4095.0
    x = stored.astype(np.float64)
    expected = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min
    expected = np.where(x <= c - 0.5 - (w - 1) / 2, y_min, expected)
    expected = np.where(x > c - 0.5 + (w - 1) / 2, y_max, expected)
    assert expected[0, 0] == 0.0 and expected[1, 2] == 4095.0
    assert expected[0, 2] == pytest.approx(2088.45)
    np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_dicom_rgb_reads_as_hw3_float32(tmp_path: Path) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = read_image(save_dicom(dicom_dataset(pixels, photometric="RGB"), tmp_path / "rgb.dcm"))
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, pixels)


def test_dicom_without_preamble_named_dcm_is_force_read(tmp_path: Path) -> None:
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = tmp_path / "bare.dcm"
    dicom_dataset(stored).save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(path), stored)


def test_rle_compressed_dicom_decodes_without_plugins(tmp_path: Path) -> None:
    stored = np.random.default_rng(6).integers(0, 4096, (16, 12), dtype=np.uint16)
    ds = dicom_dataset(stored, bits_stored=12)
    add_file_meta(ds)
    ds.compress(RLELossless)  # pydicom's own RLE encoder; sets the transfer syntax
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_image(path), stored)


def test_dicom_without_pixel_data_raises_missing_pixel_data(tmp_path: Path) -> None:
    path = save_dicom(dicom_dataset(None), tmp_path / "no_pixels.dcm")
    with pytest.raises(MissingPixelDataError, match=names(path)):
        read_image(path)


def test_multi_frame_dicom_is_unsupported(tmp_path: Path) -> None:
    ds = dicom_dataset(np.zeros((2 * 4, 4), dtype=np.uint16))
    ds.Rows = 4
    ds.NumberOfFrames = 2
    path = save_dicom(ds, tmp_path / "cine.dcm")
    with pytest.raises(UnsupportedImageError, match=names(path)) as caught:
        read_image(path)
    assert "multi-frame" in str(caught.value) and "split frames first" in str(caught.value)


def test_dicom_palette_colour_is_unsupported(tmp_path: Path) -> None:
    ds = dicom_dataset(np.zeros((4, 4), dtype=np.uint8), photometric="PALETTE COLOR")
    path = save_dicom(ds, tmp_path / "palette.dcm")
    with pytest.raises(UnsupportedImageError, match=names(path)):
        read_image(path)


def test_dicom_over_max_pixels_raises_too_large(tmp_path: Path) -> None:
    path = save_dicom(dicom_dataset(np.zeros((10, 10), dtype=np.uint16)), tmp_path / "big.dcm")
    with pytest.raises(ImageTooLargeError, match=names(path)):
        read_image(path, max_pixels=99)


def test_dicom_with_truncated_pixel_data_raises_corrupt_image_error(tmp_path: Path) -> None:
    path = save_dicom(dicom_dataset(np.zeros((32, 32), dtype=np.uint16)), tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptImageError, match=names(path)):
        read_image(path)


def test_dicom_float_pixels_with_nan_raise_corrupt_image_error(tmp_path: Path) -> None:
    ds = dicom_dataset(None)
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.array([[0.0, 1.5], [np.nan, 2.0]], dtype="<f4").tobytes()
    path = save_dicom(ds, tmp_path / "float.dcm")
    with pytest.raises(CorruptImageError, match=names(path)):
        read_image(path)


def test_text_file_named_dcm_raises_corrupt_image_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("Patient notes: this is not a DICOM file at all.\n" * 3)
    with pytest.raises(CorruptImageError, match=names(path)):
        read_image(path)


def test_jpeg2000_dicom_without_decoder_names_the_plugin(tmp_path: Path) -> None:
    path = save_compressed_junk_dicom(tmp_path / "j2k.dcm", JPEG2000)
    decoder = get_decoder(JPEG2000)
    # With no decoder at all the file is unsupported. Pillow's OpenJPEG can stand in for the
    # plugin: the junk codestream is then corrupt, and the message still suggests the plugin.
    expected = CorruptImageError if decoder.is_available else UnsupportedImageError
    with pytest.raises(expected, match=names(path)) as caught:
        read_image(path)
    if "pylibjpeg" in decoder.available_plugins:
        return  # the plugin is installed: nothing to suggest
    assert "'pylibjpeg-openjpeg'" in str(caught.value)
    if expected is UnsupportedImageError:
        assert JPEG2000.name in str(caught.value)


@pytest.mark.parametrize(
    ("transfer_syntax", "package"),
    [(HTJ2K, "pylibjpeg-openjpeg"), (JPEGLSLossless, "pylibjpeg-libjpeg")],
    ids=["htj2k", "jpeg-ls"],
)
def test_compressed_dicom_without_decoder_names_syntax_and_package(
    tmp_path: Path, transfer_syntax: UID, package: str
) -> None:
    if get_decoder(transfer_syntax).is_available:
        pytest.skip(f"a decoder for {transfer_syntax.name} is installed")
    path = save_compressed_junk_dicom(tmp_path / "compressed.dcm", transfer_syntax)
    with pytest.raises(UnsupportedImageError, match=names(path)) as caught:
        read_image(path)
    message = str(caught.value)
    assert transfer_syntax.name in message
    assert repr(package) in message
    assert "pip install 'raddino[dicom]'" in message


# --- to_uint8 and is_image_file ---------------------------------------------------------------


def test_to_uint8_returns_uint8_input_unchanged() -> None:
    image = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    assert to_uint8(image) is image


def test_to_uint8_min_max_scales_uint16_to_full_range() -> None:
    image = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    scaled = to_uint8(image)
    assert scaled.dtype == np.uint8
    np.testing.assert_array_equal(scaled, [[0, 64], [128, 255]])


def test_to_uint8_keeps_colour_shape() -> None:
    image = np.linspace(-1.0, 1.0, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    scaled = to_uint8(image)
    assert scaled.shape == (2, 3, 3)
    assert scaled.min() == 0 and scaled.max() == 255


def test_to_uint8_maps_constant_image_to_zeros() -> None:
    scaled = to_uint8(np.full((3, 3), 812.5, dtype=np.float32))
    assert scaled.dtype == np.uint8
    assert not scaled.any()


def test_to_uint8_maps_bool_to_0_and_255() -> None:
    np.testing.assert_array_equal(to_uint8(np.array([[True, False]])), [[255, 0]])


def test_to_uint8_rejects_nan_naming_the_source() -> None:
    image = np.array([[0.0, np.nan]], dtype=np.float32)
    with pytest.raises(CorruptImageError, match=re.escape("scan_042.dcm")):
        to_uint8(image, source="scan_042.dcm")


def test_is_image_file_matches_suffixes_case_insensitively() -> None:
    assert {".png", ".jpg", ".jpeg", ".dcm", ".dicom"} == IMAGE_SUFFIXES
    assert is_image_file("a/b/chest.PNG")
    assert is_image_file(Path("x.Dicom"))
    assert is_image_file("scan.jpeg")
    assert not is_image_file("notes.txt")
    assert not is_image_file("README")
    assert not is_image_file("archive.png.gz")


def test_error_str_is_path_colon_reason() -> None:
    error = CorruptImageError("dir/scan.png", "bad data")
    assert str(error) == "dir/scan.png: bad data"
    assert (error.path, error.reason) == ("dir/scan.png", "bad data")
    assert isinstance(error, ImageReadError)


# --- masks ------------------------------------------------------------------------------------

DISC = np.hypot(*np.mgrid[-10:10, -12:12]) < 7  # (20, 24) bool


def test_mask_pngs_of_every_grey_encoding_read_as_the_same_bool_array(tmp_path: Path) -> None:
    encodings = {
        "zero_255.png": Image.fromarray(DISC.astype(np.uint8) * 255),
        "zero_one.png": Image.fromarray(DISC.astype(np.uint8)),
        "one_bit.png": Image.fromarray(DISC),
        "sixteen_bit.png": Image.fromarray(DISC.astype(np.uint16) * 1000),
    }
    for name, image in encodings.items():
        image.save(tmp_path / name)
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.bool_, name
        np.testing.assert_array_equal(mask, DISC, err_msg=name)


def test_colour_mask_is_inside_where_any_channel_is_non_zero(tmp_path: Path) -> None:
    rgb = np.zeros((*DISC.shape, 3), dtype=np.uint8)
    rgb[..., 2] = DISC  # blue 1: dark, but not zero
    Image.fromarray(rgb).save(tmp_path / "blue.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "blue.png"), DISC)


def test_transparent_mask_pixels_are_outside_whatever_their_colour(tmp_path: Path) -> None:
    rgba = np.full((*DISC.shape, 4), 255, dtype=np.uint8)
    rgba[..., 3] = np.where(DISC, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), DISC)


def test_mask_of_another_size_than_its_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lungs.png"
    Image.fromarray(DISC.astype(np.uint8) * 255).save(path)
    assert read_mask(path, size=(20, 24)).shape == (20, 24)
    with pytest.raises(MaskSizeError, match=r"lungs\.png: 24x20 \(WxH\) but its image is 30x20"):
        read_mask(path, size=(20, 30))


def test_corrupt_mask_png_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "heart.png"
    noise = np.random.default_rng(5).integers(0, 2, (64, 64), dtype=np.uint8) * 255
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ImageReadError) as caught:
        read_mask(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
