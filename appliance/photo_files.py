"""Which files are photos, and a folder's photos listed with bounds: what ``enroll --from-dir``,
``fleet enroll-batch`` and ``package --reference-images`` read.

Light on purpose (no OpenCV): the roster of ``fleet enroll-batch`` is checked, folders included,
before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from .errors import ApplianceError

#: The suffixes taken as photos (case-insensitive); OpenCV decodes them all.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
#: A folder holding more entries than this is refused before it is all listed.
MAX_FOLDER_ENTRIES = 100_000


class PhotoFolderError(ApplianceError):
    """A folder of photos that cannot be listed, holds none, or holds too many."""


def is_photo(path: Path) -> bool:
    """Whether ``path``'s suffix is a photo's (the file itself is not opened)."""
    return path.suffix.lower() in PHOTO_SUFFIXES


def photos_in(folder: Path, most: int = MAX_FOLDER_ENTRIES) -> List[Path]:
    """The photo files directly in ``folder`` (not in sub-folders), sorted by name.

    Args:
        most: more photos than this is an error (a folder of someone else's pictures, say).

    Raises:
        PhotoFolderError: the folder cannot be read, holds no photo, or more than ``most`` photos or
            :data:`MAX_FOLDER_ENTRIES` entries.
    """
    found: List[Path] = []
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries, 1):
                if count > MAX_FOLDER_ENTRIES:
                    raise PhotoFolderError(
                        f"{folder} holds more than {MAX_FOLDER_ENTRIES} entries; give a folder of photos"
                    )
                path = Path(entry.path)
                if is_photo(path) and entry.is_file():
                    found.append(path)
    except OSError as err:
        raise PhotoFolderError(f"cannot list the folder {folder}: {err.strerror or err}") from None
    if not found:
        suffixes = ", ".join(sorted(PHOTO_SUFFIXES))
        raise PhotoFolderError(f"{folder} holds no photo ({suffixes})")
    if len(found) > most:
        raise PhotoFolderError(f"{folder} holds {len(found)} photos; at most {most} are read")
    return sorted(found)


__all__ = ["MAX_FOLDER_ENTRIES", "PHOTO_SUFFIXES", "PhotoFolderError", "is_photo", "photos_in"]
