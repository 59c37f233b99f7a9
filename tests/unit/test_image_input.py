"""Images from outside: every bad input is refused with a reason, odd but valid ones are converted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.vision.image import ImageError, decode_image, read_image, to_bgr


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def test_gray_rgba_and_16_bit_become_bgr() -> None:
    gray = np.full((20, 30), 128, np.uint8)
    assert decode_image(_png(gray)).shape == (20, 30, 3)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 2] = 255
    decoded = decode_image(_png(rgba))
    assert decoded.shape == (20, 30, 3) and decoded[0, 0, 2] == 255
    deep = np.full((20, 30, 3), 65535, np.uint16)
    assert decode_image(_png(deep)).dtype == np.uint8
    assert to_bgr(gray).shape == (20, 30, 3)
    assert to_bgr(rgba).shape == (20, 30, 3)
    assert to_bgr(np.zeros((5, 5, 1), np.uint8)).shape == (5, 5, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is plain text, not an image", "not a decodable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "not a decodable image"),  # a JPEG header and nothing else
    ],
)
def test_bad_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_image(data, "upload.jpg")


def test_truncated_jpeg_is_refused(shared_data: Path) -> None:
    data = (shared_data / "faces/fr_obama/obama.jpg").read_bytes()
    with pytest.raises(ImageError, match="obama-cut"):
        decode_image(data[:300], "obama-cut")


def test_oversized_images_are_refused() -> None:
    huge = np.zeros((8000, 7000), np.uint8)  # 56 MP, cheap to encode
    with pytest.raises(ImageError, match="more than"):
        decode_image(_png(huge))
    with pytest.raises(ImageError, match="too small"):
        decode_image(_png(np.zeros((1, 1), np.uint8)))


def test_files(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path)  # a folder
    webp = read_image(shared_data / "edge_cases/deepface_personC_img47_webp.jpg")
    assert webp.shape[2] == 3


def test_arrays_that_are_not_images() -> None:
    with pytest.raises(ImageError):
        to_bgr(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError):
        to_bgr(np.zeros((4, 4, 3), np.float32))
