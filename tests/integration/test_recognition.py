"""Alignment, embeddings and liveness on real faces, and the detect / evaluate commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

import cv2
import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import load_analyzer
from appliance.vision.align import TEMPLATE, align_faces, similarity_transforms
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from tests.support import run_cli


@pytest.fixture(scope="module")
def analyzer(shared_models: Path) -> Iterator[FaceAnalyzer]:
    config = validate_config({"models": {"dir": str(shared_models)}, "liveness": {"enabled": True}})
    with load_analyzer(config) as loaded:
        yield loaded


def _largest(analyzer: FaceAnalyzer, image: np.ndarray):  # type: ignore[no-untyped-def]
    faces = analyzer.detect(image, still=True)
    assert len(faces) >= 1
    return analyzer.analyze(image, faces=faces.take([faces.largest()]))


def test_similarity_recovers_a_known_transform() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Landmarks that the template maps onto exactly: p = R⁻¹ (t − shift).
    source = (np.linalg.inv(rotation) @ (TEMPLATE - shift).T).T
    (matrix,) = similarity_transforms(source[None])
    np.testing.assert_allclose(matrix[:, :2], rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_alignment_matches_opencv_on_a_real_face(analyzer: FaceAnalyzer, shared_data: Path) -> None:
    image = read_image(shared_data / "faces/fr_obama/obama.jpg")
    faces = analyzer.detect(image)
    (crop,) = align_faces(image, faces.landmarks[:1])
    # With a threshold no point exceeds, OpenCV keeps all five points and refines to the least-squares fit.
    matrix, inliers = cv2.estimateAffinePartial2D(
        faces.landmarks[0], TEMPLATE.astype(np.float32), method=cv2.RANSAC, ransacReprojThreshold=1e4
    )
    assert inliers.all()
    (ours,) = similarity_transforms(faces.landmarks[:1])
    np.testing.assert_allclose(ours, matrix, rtol=1e-3, atol=1e-2)
    reference = cv2.warpAffine(
        image, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    assert crop.shape == (112, 112, 3)
    assert np.abs(crop.astype(int) - reference.astype(int)).mean() < 2.0
    # The aligned landmarks land on the template.
    mapped = faces.landmarks[0] @ ours[:, :2].T + ours[:, 2]
    assert np.abs(mapped - TEMPLATE).max() < 6.0


def test_embeddings_are_unit_vectors_of_the_registry_dimension(
    analyzer: FaceAnalyzer, shared_data: Path
) -> None:
    analysis = _largest(analyzer, read_image(shared_data / "faces/fr_biden/biden.jpg"))
    assert analyzer.embedder.dim == 128
    assert analysis.embeddings.shape == (1, 128) and analysis.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(analysis.embeddings, axis=1), 1.0, rtol=1e-5)


def test_batched_embeddings_equal_single_ones(analyzer: FaceAnalyzer, shared_data: Path) -> None:
    crops: List[np.ndarray] = []
    for path in (
        sorted((shared_data / "faces/deepface_personA").iterdir())[:5]
        + sorted((shared_data / "faces/fr_obama").iterdir())[:4]
    ):
        crops.append(_largest(analyzer, read_image(path)).crops[0])
    batch = np.stack(crops)
    together = analyzer.embedder.embed(batch)
    one_by_one = np.concatenate([analyzer.embedder.embed(batch[i : i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_same_person_is_closer_than_another(analyzer: FaceAnalyzer, shared_data: Path) -> None:
    def embed(relative: str) -> np.ndarray:
        return _largest(analyzer, read_image(shared_data / relative)).embeddings[0]

    obama, obama2, biden = (
        embed("faces/fr_obama/obama.jpg"),
        embed("faces/fr_obama/obama2.jpg"),
        embed("faces/fr_biden/biden.jpg"),
    )
    assert float(obama @ obama2) > 0.5 > float(obama @ biden)


def test_liveness_rejects_both_spoofs_and_accepts_live_faces(
    analyzer: FaceAnalyzer, shared_data: Path
) -> None:
    def live(relative: str) -> bool:
        analysis = _largest(analyzer, read_image(shared_data / relative))
        return bool(analysis.liveness.passed[0])

    assert not live("antispoof/image_F1.jpg")  # printed photo
    assert not live("antispoof/image_F2.jpg")  # phone screen
    assert live("antispoof/image_T1.jpg")
    ordinary = [
        "faces/fr_obama/obama.jpg",
        "faces/fr_obama/obama2.jpg",
        "faces/fr_biden/biden.jpg",
        "faces/deepface_personA/img1.jpg",
        "faces/deepface_personB/img3.jpg",
        "faces/fnp_kate_siegel/1.jpg",
        "faces/fr_rose_leslie/rose1.jpg",
        "faces/fr_lin_manuel_miranda/lin1.jpg",
    ]
    present = [p for p in ordinary if (shared_data / p).exists()]
    assert len(present) >= 5
    accepted = [p for p in present if live(p)]
    assert accepted == present


def _config_file(tmp_path: Path, models: Path, extra: str = "") -> str:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[models]\ndir = "{models}"\n[storage]\ndir = "{tmp_path}"\n{extra}')
    return str(path)


def test_detect_command_json(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((shared_data / "faces/fr_obama/obama.jpg").read_bytes()[:2000])
    result = run_cli(
        "detect",
        "--json",
        "--liveness",
        "--config",
        _config_file(tmp_path, shared_models),
        str(shared_data / "multi_face/fr_two_people.jpg"),
        str(shared_data / "antispoof/image_F2.jpg"),
        str(broken),
    )
    assert result.returncode == 1  # one image could not be read; the others were processed
    document = json.loads(result.stdout)
    two, spoof, bad = document["images"]
    assert len(two["faces"]) == 2
    face = two["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0 < face["score"] <= 1
    assert face["liveness"]["passed"] is True
    assert spoof["faces"][0]["liveness"]["passed"] is False
    assert "broken.jpg" in bad["error"] and bad["faces"] == []
    assert set(document["models"]) == {"detector", "embedder", "liveness"}


def test_evaluate_command_meets_the_accuracy_bar(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    out, plot = tmp_path / "eval.json", tmp_path / "roc.png"
    result = run_cli(
        "evaluate",
        str(shared_data),
        "--labels",
        str(shared_data / "faces_identities.csv"),
        "--json",
        str(out),
        "--plot",
        str(plot),
        "--enroll-per-identity",
        "1",
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # The door's protocol: one photo enrolled per person, every other photo identified.
    door = report["door"]
    assert door["per_identity"] == 1 and door["threshold"] == 0.5 and door["enrolled_identities"] >= 20
    assert door["choice"] == "quality"  # each person's best photo, as enrolment keeps them
    assert (
        door["genuine_probes"] + door["enrolled_identities"] + door["stranger_probes"]
        == report["images"]["embedded"]
    )
    assert door["rank1"] == 1.0 and door["granted_as_someone_else"] == 0 and door["strangers_granted"] == 0
    assert 0.8 <= door["granted_rate"] <= 1.0 and door["stranger_probes"] > 0
    assert "door: 1 photo(s) enrolled per person" in result.stdout
    assert report["auc"] >= 0.999
    assert report["tar_at_far"]["0.001"] >= 0.98
    assert set(report["tar_at_far"]) == set(report["thresholds"]) == {"0.1", "0.01", "0.001"}
    assert report["pairs"]["genuine"] > 150 and report["pairs"]["impostor"] > 4000
    assert report["failed"] == []
    assert 0 <= report["eer"] < 0.01
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TAR @ FAR 0.001" in result.stdout


def test_evaluate_reports_unreadable_and_faceless_images(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,identity\n"
        "faces/fr_obama/obama.jpg,obama\nfaces/fr_obama/obama2.jpg,obama\n"
        "faces/fr_biden/biden.jpg,biden\nno_face/dlib_dog.jpg,dog\nmissing.jpg,nobody\n"
    )
    out = tmp_path / "eval.json"
    result = run_cli(
        "evaluate",
        str(shared_data),
        "--labels",
        str(labels),
        "--json",
        str(out),
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert {item["path"] for item in report["failed"]} == {"no_face/dlib_dog.jpg", "missing.jpg"}
    assert report["pairs"] == {"genuine": 1, "impostor": 2}
    assert report["tar_at_far"]["0.001"] is None and "not measurable" in report["notes"][0]


def test_evaluate_refuses_a_csv_without_the_columns(tmp_path: Path, shared_data: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,name\na.jpg,x\n")
    result = run_cli("evaluate", str(shared_data), "--labels", str(labels))
    assert result.returncode == 2
    assert "missing column(s) identity, path" in result.stderr


def test_evaluate_refuses_no_photo_enrolled(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    result = run_cli(
        "evaluate",
        str(shared_data),
        "--labels",
        str(shared_data / "faces_identities.csv"),
        "--enroll-per-identity",
        "0",
        "--config",
        _config_file(tmp_path, shared_models),
    )
    assert result.returncode == 2 and "--enroll-per-identity must be at least 1, got 0" in result.stderr
