"""The ``face_recognition`` (dlib) peer of ``face-appliance evaluate``, as a whole process of its own.

    python -m bench.peer_evaluate DIR --labels CSV

The same job as ``evaluate``, the way a user of that library would write it: every labelled photo is
read (``load_image_file``, full size), its faces found (``face_locations``: HOG, one upsampling) and
the largest one encoded (``face_encodings``); then every pair of photos is scored (−euclidean distance,
the library's metric) and the ROC AUC printed. :mod:`bench.cli` times this process beside ours. It
imports only the standard library, NumPy and ``face_recognition``, so its start is the library's own.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np


def read_labels(path: Path) -> List[Dict[str, str]]:
    """The rows of a CSV with the columns ``path`` and ``identity``."""
    with path.open(newline="", encoding="utf-8") as stream:
        return [row for row in csv.DictReader(stream) if row.get("path") and row.get("identity")]


def pair_scores(encodings: np.ndarray, labels: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """``(genuine, impostor)`` scores of every pair of rows: −euclidean distance between encodings."""
    names = np.asarray(labels)
    first, second = np.triu_indices(len(names), k=1)
    scores = -np.linalg.norm(encodings[first] - encodings[second], axis=1)
    same = names[first] == names[second]
    return scores[same], scores[~same]


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half)."""
    above = (genuine[:, None] > impostor[None, :]).sum()
    ties = (genuine[:, None] == impostor[None, :]).sum()
    return float((above + 0.5 * ties) / (len(genuine) * len(impostor)))


def encode_largest(face_recognition: Any, path: Path) -> Any:
    """The encoding of the largest face in the photo at ``path``, or ``None`` when there is none."""
    image = face_recognition.load_image_file(str(path))
    locations = face_recognition.face_locations(image)
    if not locations:
        return None
    largest = max(locations, key=lambda box: (box[2] - box[0]) * (box[1] - box[3]))
    return np.asarray(face_recognition.face_encodings(image, [largest])[0], np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder the CSV's paths are relative to")
    parser.add_argument("--labels", type=Path, required=True, metavar="CSV", help="columns path, identity")
    args = parser.parse_args()
    try:
        with warnings.catch_warnings():  # face_recognition_models: "pkg_resources is deprecated"
            warnings.simplefilter("ignore")
            import face_recognition
    except (ImportError, SystemExit) as err:  # it calls quit() when face_recognition_models is missing
        sys.stderr.write(f"error: face_recognition is not importable: {err}\n")
        return 3
    rows = read_labels(args.labels)
    vectors: List[np.ndarray] = []
    labels: List[str] = []
    failed = 0
    for row in rows:
        try:
            vector = encode_largest(face_recognition, args.dir / row["path"])
        except OSError:
            vector = None
        if vector is None:
            failed += 1
            continue
        vectors.append(vector)
        labels.append(row["identity"])
    if len(vectors) < 2:
        sys.stderr.write(f"error: only {len(vectors)} photo(s) with a face; nothing to compare\n")
        return 1
    genuine, impostor = pair_scores(np.stack(vectors), labels)
    print(f"images: {len(rows)} labelled, {len(vectors)} encoded, {len(set(labels))} identities")
    print(f"pairs: {len(genuine)} genuine, {len(impostor)} impostor")
    if len(genuine) and len(impostor):
        print(f"ROC AUC {roc_auc(genuine, impostor):.5f}")
    if failed:
        print(f"failed: {failed} photo(s) without a face or unreadable")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
