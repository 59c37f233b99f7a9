"""Turning files and bytes from outside into the ``(H, W, 3)`` uint8 BGR images the vision code takes.

Everything an uploader can send is handled or refused with a reason: grayscale, RGBA, 16-bit and
palette images are converted; the EXIF orientation is applied; the format is read from the content,
not the file name (a WebP named ``.jpg`` works); truncated, empty, non-image and oversized inputs
raise :class:`ImageError`.

Decompression bombs (a few kilobytes that declare 30 000 × 30 000 pixels) are refused before any
pixel is decoded: :func:`image_dimensions` reads the size from the header of the formats accepted
(JPEG, PNG, WebP, BMP, TIFF, binary PNM), and only images within :data:`MAX_IMAGE_PIXELS` reach the
decoder. Other formats OpenCV could decode (GIF, AVIF, HDR, JPEG 2000, Sun raster, PFM, …) are
refused: they are not what a door camera or an enrolment photo is, and each is more decoder code
exposed to input from outside. (OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS`` guard is not relied on:
it is read once when OpenCV loads, which may be before this module sets it.)
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

# OpenCV's own guard against decompression bombs, a second line behind image_dimensions(); it only
# takes effect when this module is imported before cv2 is.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))

import cv2
import numpy as np

from engines.errors import FileReadError
from engines.files import read_bounded

from ..errors import ApplianceError

#: Largest encoded image accepted (bytes) and largest decoded one (pixels).
MAX_IMAGE_BYTES = 50 * 2**20
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ApplianceError):
    """An input that is not a usable image: unreadable, not an image, truncated, empty or too large."""


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, BMP, TIFF, …).

    Returns:
        ``(H, W, 3)`` uint8 BGR, C-contiguous.

    Raises:
        ImageError: empty, too large, or not decodable; the message names ``name``.
    """
    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{name}: {len(data)} bytes is more than the {MAX_IMAGE_BYTES} accepted")
    kind, size = image_dimensions(data)
    if kind is None:
        raise ImageError(
            f"{name}: not a decodable image (not one of the accepted formats: {', '.join(ACCEPTED_FORMATS)})"
        )
    if size is None:
        raise ImageError(f"{name}: not a decodable image ({kind} with a truncated or damaged header)")
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{name}: {width}×{height} pixels is more than the {MAX_IMAGE_PIXELS} accepted "
            f"(refused before decoding)"
        )
    buffer = np.frombuffer(data, np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha
    except cv2.error as err:
        raise ImageError(f"{name}: cannot decode: {err}") from err
    if image is None:
        raise ImageError(f"{name}: not a decodable image (unknown format, or truncated)")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{name}: {image.shape[1]}×{image.shape[0]} pixels is more than the {MAX_IMAGE_PIXELS} accepted"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"{name}: {image.shape[1]}×{image.shape[0]} pixels is too small")
    return np.ascontiguousarray(image)


#: The formats :func:`decode_image` accepts (by content, not by file name).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "PNM")


def image_dimensions(data: bytes) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """The format and the ``(width, height)`` an encoded image declares, read from its header only.

    Returns:
        ``(format, (width, height))``; ``(format, None)`` when the format is recognised but its
        header is truncated, damaged or declares no size; ``(None, None)`` for anything else.
        Never raises.
    """
    try:
        for kind, magic, reader in _HEADER_READERS:
            if data.startswith(magic):
                size = reader(data)
                if size is not None and (size[0] <= 0 or size[1] <= 0):
                    size = None
                return kind, size
    except (struct.error, IndexError, ValueError):
        return _kind_of(data), None
    return None, None


def _kind_of(data: bytes) -> Optional[str]:
    return next((kind for kind, magic, _ in _HEADER_READERS if data.startswith(magic)), None)


def _png_size(data: bytes) -> Optional[Tuple[int, int]]:
    # signature (8) ‖ length (4) ‖ "IHDR" ‖ width (4, big-endian) ‖ height (4)
    if data[12:16] != b"IHDR" or not _png_chunks_fit(data):
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _png_chunks_fit(data: bytes) -> bool:
    """Whether every chunk up to IEND lies within ``data``: length (4) ‖ type (4) ‖ body ‖ CRC (4).

    A chunk declaring more bytes than the file holds is damage; OpenCV's reader allocates what it
    declares (a 2 KB PNG whose IDAT claims 3.6 GB took 3.4 GiB and 5 s before it was refused).
    """
    position = 8
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        if position + 12 + length > len(data):
            return False
        if data[position + 4 : position + 8] == b"IEND":
            break
        position += 12 + length
    return True


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    # Walk the marker segments to the first start-of-frame (SOF0…SOF15 but DHT, JPG and DAC).
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        if length < 2:
            return None
        position += 2 + length
    return None


def _webp_size(data: bytes) -> Optional[Tuple[int, int]]:
    if data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8 ":  # lossy: frame tag (3) ‖ start code 9d 01 2a ‖ 14-bit width ‖ 14-bit height
        if body[3:6] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f ‖ 14-bit width-1 ‖ 14-bit height-1 (little-endian bits)
        if body[0] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags (4) ‖ 24-bit canvas width-1 ‖ 24-bit canvas height-1
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return (width, height) if len(body) >= 10 else None
    return None


def _bmp_size(data: bytes) -> Optional[Tuple[int, int]]:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _tiff_size(data: bytes) -> Optional[Tuple[int, int]]:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found = {}
    for index in range(min(count, 4096)):
        entry = data[offset + 2 + 12 * index : offset + 14 + 12 * index]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            if kind == 3:
                (found[tag],) = struct.unpack(order + "H", entry[8:10])
            elif kind == 4:
                (found[tag],) = struct.unpack(order + "I", entry[8:12])
            else:
                return None
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


def _pnm_size(data: bytes) -> Optional[Tuple[int, int]]:
    # "P5"/"P6", then width and height as decimal tokens, with whitespace and #-comments between
    tokens = []
    position = 2
    while len(tokens) < 2 and position < min(len(data), 4096):
        char = data[position : position + 1]
        if char == b"#":
            end = data.find(b"\n", position)
            position = len(data) if end < 0 else end + 1
        elif char.isspace():
            position += 1
        elif char.isdigit():
            start = position
            while position < len(data) and data[position : position + 1].isdigit() and position - start < 10:
                position += 1
            tokens.append(int(data[start:position]))
        else:
            return None
    return (tokens[0], tokens[1]) if len(tokens) == 2 else None


_HEADER_READERS = (
    ("PNG", b"\x89PNG\r\n\x1a\n", _png_size),
    ("JPEG", b"\xff\xd8\xff", _jpeg_size),
    ("WebP", b"RIFF", _webp_size),
    ("BMP", b"BM", _bmp_size),
    ("TIFF", b"II*\x00", _tiff_size),
    ("TIFF", b"MM\x00*", _tiff_size),
    ("PNM", b"P5", _pnm_size),
    ("PNM", b"P6", _pnm_size),
)


def read_image(path: Union[str, os.PathLike[str]]) -> np.ndarray:
    """Read and decode an image file; see :func:`decode_image`.

    Raises:
        ImageError: the file cannot be read or is not a usable image.
    """
    file = Path(path)
    try:
        data = read_bounded(file, MAX_IMAGE_BYTES)
    except FileReadError as err:
        raise ImageError(f"{err} (an image file of at most {MAX_IMAGE_BYTES} bytes is read)") from None
    return decode_image(data, str(file))


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Bring an in-memory array to ``(H, W, 3)`` uint8 BGR: gray, BGRA and 16-bit inputs are converted.

    Raises:
        ImageError: an array that is not an image.
    """
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"image arrays must be uint8 or uint16, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ImageError(f"not an image array: shape {image.shape}")
