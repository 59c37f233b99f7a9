"""``evaluate --liveness`` end to end: the real detector and MiniFASNet pair on the shared images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from tests.support import run_cli

#: The Silent-Face-Anti-Spoofing samples (shared/data/MANIFEST.md): a printed photo, a phone screen, a live face.
ANTISPOOF: List[Tuple[str, str]] = [
    ("antispoof/image_F1.jpg", "print"),
    ("antispoof/image_F2.jpg", "replay"),
    ("antispoof/image_T1.jpg", "bona_fide"),
]


def _config_file(tmp_path: Path, models: Path) -> str:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[models]\ndir = "{models}"\n[storage]\ndir = "{tmp_path}"\n')
    return str(path)


def _write_labels(path: Path, rows: List[Tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _apcer_bpcer(scores: List[Dict[str, Any]], threshold: float) -> Tuple[Dict[str, float], float]:
    """APCER per species and BPCER recounted from the per-image scores."""
    by_label: Dict[str, List[float]] = {}
    for item in scores:
        if item["score"] is not None:
            by_label.setdefault(item["label"], []).append(item["score"])
    apcer = {
        label: float(np.mean(np.asarray(values) >= threshold))
        for label, values in by_label.items()
        if label != "bona_fide"
    }
    return apcer, float(np.mean(np.asarray(by_label["bona_fide"]) < threshold))


def test_liveness_on_the_shared_images(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    rows = list(ANTISPOOF)
    with (shared_data / "faces_identities.csv").open(newline="", encoding="utf-8") as stream:
        rows += [(row["path"], "bona_fide") for row in csv.DictReader(stream)]
    # An image without a face, presented as an attack of another kind: a non-response, not an error.
    rows.append(("no_face/dlib_dog.jpg", "other"))
    labels = _write_labels(tmp_path / "labels.csv", rows)
    out, plot = tmp_path / "liveness.json", tmp_path / "liveness.png"
    result = run_cli(
        "evaluate",
        "--liveness",
        str(shared_data),
        "--labels",
        str(labels),
        "--json",
        str(out),
        "--plot",
        str(plot),
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())

    # Every row is a presentation, counted once, in the file's order.
    assert [(item["path"], item["label"]) for item in report["scores"]] == rows
    counts = report["presentations"]
    assert set(counts) == {"bona_fide", "print", "replay", "other"}
    assert sum(c["labelled"] for c in counts.values()) == len(rows)
    assert counts["print"] == counts["replay"] == {"labelled": 1, "scored": 1, "no_face": 0}
    assert counts["other"] == {"labelled": 1, "scored": 0, "no_face": 1}
    assert report["no_face"] == [{"path": "no_face/dlib_dog.jpg", "label": "other"}]
    assert report["non_response"]["apnrr"]["other"]["rate"] == 1.0
    assert report["unreadable"] == []
    assert set(report["models"]) >= {"detector", "liveness"}
    for item in report["scores"]:
        assert (item["score"] is None) == (item["faces"] == 0)
        assert item["score"] is None or 0.0 <= item["score"] <= 1.0

    # The configured threshold's figures are those of the per-image scores.
    configured = report["configured_threshold"]
    assert configured["threshold"] == 0.5
    apcer, bpcer = _apcer_bpcer(report["scores"], configured["threshold"])
    assert set(configured["apcer"]) == {"print", "replay"}  # "other" had no face: no APCER
    assert {name: rate["rate"] for name, rate in configured["apcer"].items()} == apcer
    assert configured["bpcer"]["rate"] == bpcer
    assert configured["bpcer"]["presentations"] == counts["bona_fide"]["scored"]
    assert configured["apcer_max"] == max(apcer.values())
    # Both Silent-Face samples are refused at the default threshold and its live sample passes.
    assert configured["apcer_max"] == 0.0
    assert next(i["score"] for i in report["scores"] if i["path"] == "antispoof/image_T1.jpg") >= 0.5

    # BPCER20 and BPCER10: every species within the target, and the threshold the lowest that keeps it so.
    attack_scores = sorted(
        i["score"] for i in report["scores"] if i["label"] != "bona_fide" and i["score"] is not None
    )
    for key, target in (("0.05", 0.05), ("0.1", 0.1)):
        point = report["bpcer_at_apcer"][key]
        apcer, bpcer = _apcer_bpcer(report["scores"], point["threshold"])
        assert all(rate <= target for rate in apcer.values())
        assert point["bpcer"]["rate"] == bpcer and point["apcer_max"] == max(apcer.values())
        lower = [s for s in attack_scores if s < point["threshold"]]
        if lower:  # the next attack score down would let too many through
            assert max(_apcer_bpcer(report["scores"], lower[-1])[0].values()) > target
    for rate in [*configured["apcer"].values(), configured["bpcer"]]:
        assert 0.0 <= rate["rate"] <= rate["upper_95"] <= 1.0
    # One print and one replay cannot resolve 5 % or 10 %: the report says so.
    assert sum("is finer than the APCER can move" in note for note in report["notes"]) == 2

    assert "BPCER20 (APCER <= 5 %)" in result.stdout and "APCER replay" in result.stdout
    assert "no face: no_face/dlib_dog.jpg (other)" in result.stdout
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_images_are_listed_and_fail_the_run(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for relative, _ in ANTISPOOF:
        shutil.copyfile(shared_data / relative, folder / Path(relative).name)
    (folder / "broken.jpg").write_bytes((shared_data / ANTISPOOF[2][0]).read_bytes()[:2000])
    rows = [(Path(relative).name, label) for relative, label in ANTISPOOF] + [("broken.jpg", "bona_fide")]
    out = tmp_path / "liveness.json"
    result = run_cli(
        "evaluate",
        "--liveness",
        str(folder),
        "--labels",
        str(_write_labels(tmp_path / "labels.csv", rows)),
        "--json",
        str(out),
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 1, result.stderr  # the figures are written, the run is not clean
    report = json.loads(out.read_text())
    assert [item["path"] for item in report["unreadable"]] == ["broken.jpg"]
    assert report["presentations"]["bona_fide"]["labelled"] == 1  # the unreadable image is no presentation
    assert "unreadable: broken.jpg (bona_fide)" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nantispoof/image_F1.jpg,photo\n", "line 2: unknown label 'photo'"),
        ("path,identity\nantispoof/image_F1.jpg,print\n", "unknown column(s) 'identity'"),
        (
            "path,label\n../data/antispoof/image_F1.jpg,print\n",
            "line 2: path '../data/antispoof/image_F1.jpg'",
        ),
    ],
)
def test_a_bad_labels_file_is_refused_before_any_model_loads(
    tmp_path: Path, shared_data: Path, text: str, message: str
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    result = run_cli("evaluate", "--liveness", str(shared_data), "--labels", str(labels))
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""


def test_liveness_does_not_take_the_door_protocol(tmp_path: Path, shared_data: Path) -> None:
    labels = _write_labels(tmp_path / "labels.csv", ANTISPOOF)
    result = run_cli(
        "evaluate", "--liveness", str(shared_data), "--labels", str(labels), "--enroll-per-identity", "1"
    )
    assert result.returncode == 2 and "does not go with --liveness" in result.stderr


def test_a_class_without_a_face_fails_with_the_reason(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    labels = _write_labels(
        tmp_path / "labels.csv", [("antispoof/image_T1.jpg", "bona_fide"), ("no_face/dlib_dog.jpg", "print")]
    )
    result = run_cli(
        "evaluate",
        "--liveness",
        str(shared_data),
        "--labels",
        str(labels),
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 1
    assert (
        "no attack presentation to measure the APCER on: no face was found in any of the 1" in result.stderr
    )
