"""Fuzzing the image input of ``enroll``/``detect``: any bytes give a BGR image or an ImageError.

Seeds are real photos from ``../shared/data`` and small images encoded here in every accepted format;
hypothesis truncates them, flips and inserts bytes, rewrites the declared dimensions in their headers
(huge, zero, negative), and also feeds pure garbage and garbage behind a real format's magic number.
Decompression bombs (a few kilobytes declaring hundreds of megapixels) must be refused before they are
decoded: the test checks the process's peak memory did not grow by the size of the declared image.
"""

from __future__ import annotations

import resource
import struct
import zlib
from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.vision.image import MAX_IMAGE_PIXELS, ImageError, decode_image, image_dimensions
from tests.fuzz.conftest import fuzz_settings

SHARED_PHOTOS = (
    "faces/fr_obama/obama.jpg",
    "edge_cases/32bit.png",
    "edge_cases/deepface_personC_img47_webp.jpg",
    "antispoof/image_T1.jpg",
)


#: Magic numbers of image formats, accepted and not (GIF), put before garbage.
MAGIC_NUMBERS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"BM",
    b"II*\x00",
    b"P6",
    b"GIF89a",
]
#: Widths and heights written into headers: zero, tiny, at and past 16-bit limits, huge.
ODD_SIDES = [0, 1, 2, 65535, 65536, 100_000, 2**31 - 1]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` × ``height`` black pixels: tiny on disk, huge decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte "none" + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row) for _ in range(height)]
    chunks.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(chunks))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: np.ndarray, extension: str) -> bytes:
    ok, data = cv2.imencode(extension, image)
    assert ok, extension
    return data.tobytes()


def _seeds(shared_data: Path) -> List[bytes]:
    seeds = [(shared_data / path).read_bytes() for path in SHARED_PHOTOS]
    small = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    seeds += [_encoded(small, ext) for ext in (".png", ".jpg", ".webp", ".bmp", ".tiff", ".ppm")]
    seeds.append(_encoded(small[:, :, 0], ".pgm"))
    return seeds


def _patch_dimensions(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the width and height its header declares replaced (PNG, JPEG, BMP, PNM; others unchanged)."""
    kind, _ = image_dimensions(data)
    if kind == "PNG":
        header = struct.pack(">II", width % 2**32, height % 2**32) + data[24:29]
        return data[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF) + data[33:]
    if kind == "JPEG":
        position = 2
        while position + 9 < len(data):
            marker = data[position + 1]
            length = struct.unpack(">H", data[position + 2 : position + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                dims = struct.pack(">HH", height % 2**16, width % 2**16)
                return data[: position + 5] + dims + data[position + 9 :]
            position += 2 + length
        return data
    if kind == "BMP":
        return data[:18] + struct.pack("<ii", width % 2**31, -(height % 2**31)) + data[26:]
    if kind == "PNM":
        return data[:2] + f"\n{width} {height}\n".encode() + data[data.index(b"\n255") + 1 :]
    return data


@st.composite
def _mutated(draw: st.DrawFn, seeds: List[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    action = draw(st.sampled_from(["truncate", "flip", "insert", "dimensions", "garbage", "magic"]))
    if action == "truncate":
        return data[: draw(st.integers(min_value=0, max_value=len(data)))]
    if action == "flip":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            position = draw(st.integers(min_value=0, max_value=min(len(mutable) - 1, 4096)))
            mutable[position] = draw(st.integers(min_value=0, max_value=255))
        return bytes(mutable)
    if action == "insert":
        position = draw(st.integers(min_value=0, max_value=min(len(data), 4096)))
        return data[:position] + draw(st.binary(min_size=1, max_size=64)) + data[position:]
    if action == "dimensions":
        side = st.sampled_from(ODD_SIDES) | st.integers(0, 2**32 - 1)
        return _patch_dimensions(data, draw(side), draw(side))
    if action == "magic":
        return draw(st.sampled_from(MAGIC_NUMBERS)) + draw(st.binary(max_size=200))
    return draw(st.binary(max_size=300))


def _check(data: bytes) -> None:
    try:
        image = decode_image(data, "upload")
    except ImageError as err:
        assert str(err).startswith("upload: ")
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 2 <= image.shape[0] and 2 <= image.shape[1]
    assert image.shape[0] * image.shape[1] <= MAX_IMAGE_PIXELS
    assert image.flags["C_CONTIGUOUS"]


def test_mutated_and_garbage_images(shared_data: Path, budget: Any) -> None:
    seeds = _seeds(shared_data)
    for seed in seeds:
        _check(seed)
    spent = budget("images: mutated, garbage, huge headers")

    @fuzz_settings(600)
    @given(_mutated(seeds))
    @example(b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03")  # JPEG frame header 65535×65535, no data
    @example(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # PNG cut inside its header
    @example(b"II*\x00\xff\xff\xff\xff")  # TIFF whose first directory lies beyond the end
    @example(b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\xff" * 20)
    @example(b"P6\n99999999999 1\n255\n")
    @example(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")  # GIF: not an accepted format
    def run(data: bytes) -> None:
        if spent.spend():
            _check(data)

    run()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@pytest.mark.parametrize(
    ("width", "height"),
    [(30_000, 30_000), (20_000, 5_000), (65_535, 65_535)],
)
def test_decompression_bombs_are_refused_before_decoding(width: int, height: int) -> None:
    bomb = png_bomb(width, height)
    assert len(bomb) < 2 * 2**20  # the point of a bomb: small on the wire
    before = _peak_rss_mib()
    with pytest.raises(ImageError, match="refused before decoding"):
        decode_image(bomb, "bomb.png")
    # Decoding it would need width × height × 3 bytes (≥ 300 MB); the peak must not have moved by that.
    assert _peak_rss_mib() - before < 100, f"peak memory grew by {_peak_rss_mib() - before:.0f} MiB"


def test_jpeg_declaring_a_huge_frame_is_refused_before_decoding(shared_data: Path) -> None:
    photo = (shared_data / "faces/fr_obama/obama.jpg").read_bytes()
    huge = _patch_dimensions(photo, 60_000, 60_000)
    assert image_dimensions(huge) == ("JPEG", (60_000, 60_000))
    before = _peak_rss_mib()
    with pytest.raises(ImageError, match="refused before decoding"):
        decode_image(huge, "huge.jpg")
    assert _peak_rss_mib() - before < 100


def test_png_chunk_declaring_more_than_the_file_is_refused_before_decoding() -> None:
    """Found by ``python -m bench.reliability``: a 2 KB PNG whose IDAT declares 3.6 GB made OpenCV
    allocate 3.4 GiB and spend seconds before refusing it."""
    small = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    png = _encoded(small, ".png")
    assert png[37:41] == b"IDAT"
    damaged = png[:33] + struct.pack(">I", 3_607_103_779) + png[37:]
    before = _peak_rss_mib()
    with pytest.raises(ImageError, match="truncated or damaged"):
        decode_image(damaged, "upload")
    assert _peak_rss_mib() - before < 100, f"peak memory grew by {_peak_rss_mib() - before:.0f} MiB"
    assert decode_image(png, "upload").shape == (24, 32, 3)  # the undamaged one still decodes
