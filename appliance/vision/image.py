"""Turning files and bytes from outside into the ``(H, W, 3)`` uint8 BGR images the vision code takes.

Everything an uploader can send is handled or refused with a reason: grayscale, RGBA, 16-bit and
palette images are converted; the EXIF orientation is applied; the format is read from the content,
not the file name (a WebP named ``.jpg`` works); truncated, empty, non-image and oversized inputs
raise :class:`ImageError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

# OpenCV's own guard against decompression bombs; read when the first image is decoded.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))

import cv2
import numpy as np

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


def read_image(path: Union[str, os.PathLike[str]]) -> np.ndarray:
    """Read and decode an image file; see :func:`decode_image`.

    Raises:
        ImageError: the file cannot be read or is not a usable image.
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageError(f"{file}: {size} bytes is more than the {MAX_IMAGE_BYTES} accepted")
        data = file.read_bytes()
    except OSError as err:
        raise ImageError(f"{file}: cannot read: {err.strerror or err}") from err
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
