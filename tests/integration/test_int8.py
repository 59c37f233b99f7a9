"""INT8 (QDQ) models against FP32 on the real models and images, on the CPU back-end.

The module fixture builds the calibration sets from shared/data images that are not in the labelled
set (multi-face photos, the videos, the anti-spoofing samples, the no-face images, the edge cases —
two of those three are copies of labelled photos), quantizes the six models once, and compares INT8
with FP32 on the labelled faces
(``faces_identities.csv``). The tests then check the issue's figures (embedder cosine and TAR, MTCNN
agreement), the QDQ format TensorRT needs, the gate, the install and the ``backend.int8`` switch,
and the ``calibrate`` command end to end. Nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from appliance.calibration_inputs import FileDecoder, analyzer_from, labelled_items, vision_side
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.evaluation import far_key
from appliance.runtime.loading import load_analyzer
from appliance.vision.image import read_image
from calibration.interfaces import VisionSide
from calibration.quantize import KEEP_FLOAT, MIN_OPSET, fp32_model_bytes, quantize_model
from calibration.report import Comparison, compare, gate, install, open_backends, open_pipelines
from calibration.sets import CALIBRATED_MODELS, BuildSummary, build_sets, iter_frames, list_sources, load_set
from engines.int8 import INDEX_FILE, int8_file
from engines.registry import get_model
from tests.support import run_cli

CALIBRATION_SOURCES = ("multi_face", "video", "antispoof", "edge_cases", "no_face")
MAX_COUNT = 160
LABELS = "faces_identities.csv"


def _linked_models(folder: Path, shared_models: Path) -> Path:
    """A models folder of links to the shared models, so that installing writes under ``folder``."""
    folder.mkdir(parents=True)
    for entry in shared_models.iterdir():
        if entry.is_dir():
            (folder / entry.name).symlink_to(entry, target_is_directory=True)
    return folder


@dataclass
class Calibrated:
    config: ApplianceConfig
    vision: VisionSide
    sets_dir: Path
    summary: BuildSummary
    qdq: Dict[str, bytes]
    comparison: Comparison


@pytest.fixture(scope="module")
def calibrated(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path, shared_data: Path
) -> Calibrated:
    root = tmp_path_factory.mktemp("int8")
    models = _linked_models(root / "models", shared_models)
    config = validate_config({"models": {"dir": str(models)}, "storage": {"dir": str(root / "state")}})
    vision = vision_side(config)
    sets_dir = root / "sets"
    summary = build_sets(
        vision, [shared_data / sub for sub in CALIBRATION_SOURCES], CALIBRATED_MODELS, sets_dir, MAX_COUNT
    )
    qdq: Dict[str, bytes] = {}
    for name in CALIBRATED_MODELS:
        spec = get_model(name)
        result = quantize_model(
            spec, fp32_model_bytes(spec, models), load_set(sets_dir, name), root / "int8" / int8_file(spec)
        )
        qdq[name] = result.path.read_bytes()
    items = labelled_items(shared_data, shared_data / LABELS)
    fp32, int8, backends = open_pipelines(vision, qdq, liveness=True)
    try:
        comparison = compare(vision, fp32, int8, items, list(qdq))
    finally:
        for backend in backends:
            backend.close()
    return Calibrated(config, vision, sets_dir, summary, qdq, comparison)


# -- the calibration sets ---------------------------------------------------------------------------


def test_sets_hold_what_the_networks_are_fed(calibrated: Calibrated, shared_data: Path) -> None:
    summary = calibrated.summary
    assert not summary.skipped
    document = json.loads((calibrated.sets_dir / "sets.json").read_text())
    for name in CALIBRATED_MODELS:
        data = load_set(calibrated.sets_dir, name)
        spec = get_model(name)
        assert data.dtype == np.float32 and 0 < len(data) <= MAX_COUNT
        assert document["sets"][name]["shape"] == list(data.shape)
        assert document["sets"][name]["layout"] == spec.preprocessing.layout
    assert load_set(calibrated.sets_dir, "mtcnn-pnet").shape[1:] == (64, 64, 3)
    assert load_set(calibrated.sets_dir, "mobilefacenet").shape[1:] == (3, 112, 112)
    # R-Net's set is capped at 160 here, below the 500 recommended: the index says so.
    assert any("mtcnn-rnet" in warning for warning in document["warnings"])
    assert {source["path"] for source in document["sources"]} <= {
        str(path.path) for path in list_sources([shared_data / sub for sub in CALIBRATION_SOURCES])
    }

    # The first embedder sample is the first face of the first source, preprocessed by the inference path.
    first = next(iter_frames(FileDecoder(), list_sources([shared_data / CALIBRATION_SOURCES[0]]), [], []))
    config = calibrated.config
    fp32, _, backends = open_backends(config.models.dir, config.backend.threads, {}, liveness=False)
    try:
        analysis = analyzer_from(config, fp32).analyze(first.image, still=True, embed=False)
    finally:
        for backend in backends:
            backend.close()
    expected = get_model("mobilefacenet").preprocessing.to_blob(analysis.crops[:1])  # type: ignore[index]
    np.testing.assert_array_equal(load_set(calibrated.sets_dir, "mobilefacenet")[:1], expected)


# -- the QDQ models ---------------------------------------------------------------------------------


def test_qdq_models_are_symmetric_int8_with_per_channel_weights(calibrated: Calibrated) -> None:
    for name, data in calibrated.qdq.items():
        model = onnx.load_from_string(data)
        opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
        assert opset >= MIN_OPSET, name
        initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        quantize_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert quantize_nodes, f"{name}: no Q/DQ nodes"
        per_channel = 0
        for node in quantize_nodes:
            zero_point = initializers[node.input[2]]
            assert zero_point.dtype in (np.int8, np.int32), (
                f"{name}: {node.name} zero point {zero_point.dtype}"
            )
            assert not zero_point.any(), f"{name}: {node.name} is not symmetric"
            if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
                scale = initializers[node.input[1]]
                per_channel += int(scale.size > 1)
        assert per_channel > 0, f"{name}: no per-channel weights"
        producers = {out: node for node in model.graph.node for out in node.output}
        keep = KEEP_FLOAT.get(name, ())
        kept = [n for n in model.graph.node if any(n.name == k or n.name.startswith(f"{k}/") for k in keep)]
        assert len(kept) >= len(keep)
        for node in kept:  # layers kept in floating point get no dequantized input
            assert all(
                producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input
            )
        fp32 = onnx.load_from_string(fp32_model_bytes(get_model(name), calibrated.config.models.dir))
        assert [i.name for i in model.graph.input] == [i.name for i in fp32.graph.input]
        assert [o.name for o in model.graph.output] == [o.name for o in fp32.graph.output]


# -- the figures ----------------------------------------------------------------------------


def test_int8_embedder_matches_fp32(calibrated: Calibrated) -> None:
    section = calibrated.comparison.document["embedder"]
    assert section["faces"] >= 95
    assert section["cosine"]["mean"] >= 0.99
    fp32, int8 = section["fp32"]["tar_at_far"], section["int8"]["tar_at_far"]
    key = far_key(1e-3)
    assert fp32[key] is not None and int8[key] is not None, "TAR at FAR 1e-3 must be measurable here"
    assert int8[key] >= fp32[key] - 0.01
    assert section["tar_drop"][key] == pytest.approx(fp32[key] - int8[key])


def test_int8_mtcnn_finds_the_same_faces(calibrated: Calibrated) -> None:
    section = calibrated.comparison.document["detection"]
    assert section["fp32_faces"] >= 100
    assert section["agreement"] >= 0.98
    assert section["matched"] == int((calibrated.comparison.ious >= 0.8).sum())


def test_liveness_agreement_is_measured(calibrated: Calibrated) -> None:
    section = calibrated.comparison.document["liveness"]
    assert section["faces"] == calibrated.comparison.document["detection"]["fp32_faces"]
    assert 0.0 <= section["decision_agreement"] <= 1.0
    assert calibrated.comparison.live.shape == (section["faces"], 2)


# -- gate, install, the backend.int8 switch ----------------------------------------------------------


def test_passed_models_are_installed_and_the_cpu_backend_uses_them(
    calibrated: Calibrated, tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = calibrated.config
    results = gate(calibrated.comparison.document, config.calibration, list(calibrated.qdq))
    assert [r.group for r in results] == ["mtcnn", "embedder", "liveness"]
    passed = [name for r in results if r.passed for name in r.models]
    assert "mobilefacenet" in passed and "mtcnn-pnet" in passed
    report = tmp_path / "report.json"
    report.write_text(json.dumps(calibrated.comparison.document))
    installed = install(
        config.int8_dir,
        results,
        {n: (calibrated.qdq[n], {"method": "percentile"}) for n in calibrated.qdq},
        report,
    )
    assert sorted(p.name for p in installed) == sorted(Path(int8_file(get_model(n))).name for n in passed)
    assert (config.int8_dir / "report.json").is_file()

    image = read_image(shared_data / "faces/fr_obama/obama.jpg")
    switched = config.model_copy(deep=True)
    switched.backend.int8 = True
    switched.liveness.enabled = True
    with caplog.at_level(logging.INFO, logger="appliance.runtime.loading"):
        with load_analyzer(switched) as int8, load_analyzer(config) as fp32:
            quantized = int8.analyze(image, still=True)
            reference = fp32.analyze(image, still=True, faces=quantized.faces)
    loaded = [
        r.getMessage().split(":")[0] for r in caplog.records if "running the INT8 model" in r.getMessage()
    ]
    assert sorted(loaded) == sorted(passed)
    assert len(quantized.faces) >= 1
    cosine = float(np.sum(quantized.embeddings[0] * reference.embeddings[0]))  # type: ignore[index]
    assert cosine >= 0.99

    caplog.clear()
    elsewhere = switched.model_copy(deep=True)
    elsewhere.calibration.int8_dir = tmp_path / "no-int8-here"
    with caplog.at_level(logging.WARNING, logger="appliance.runtime.loading"):
        with load_analyzer(elsewhere) as fallback:
            assert len(fallback.detect(image, still=True)) >= 1
    warned = [r.getMessage() for r in caplog.records if "using the FP32 model" in r.getMessage()]
    assert len(warned) == 6


def test_gate_refuses_a_badly_calibrated_model_and_installs_nothing(
    calibrated: Calibrated, tmp_path: Path, shared_data: Path
) -> None:
    spec = get_model("mobilefacenet")
    # A calibration set of one blank crop: the ranges fit nothing a face produces.
    blank = spec.preprocessing.to_blob(np.full((1, 112, 112, 3), 128, np.uint8))
    bad = quantize_model(
        spec, fp32_model_bytes(spec, calibrated.config.models.dir), blank, tmp_path / "bad.int8.onnx"
    )
    items = [
        item for item in labelled_items(shared_data, shared_data / LABELS) if "/deepface_" in str(item.path)
    ]
    fp32, int8, backends = open_pipelines(
        calibrated.vision, {spec.name: bad.path.read_bytes()}, liveness=False
    )
    try:
        comparison = compare(calibrated.vision, fp32, int8, items, [spec.name])
    finally:
        for backend in backends:
            backend.close()
    assert comparison.document["detection"] is None and comparison.document["liveness"] is None
    (result,) = gate(comparison.document, calibrated.config.calibration, [spec.name])
    assert not result.passed
    assert any("min_cosine_mean" in failure for failure in result.failures)
    config = calibrated.config.model_copy(deep=True)
    config.calibration.int8_dir = tmp_path / "int8"
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert install(config.int8_dir, [result], {spec.name: (bad.path.read_bytes(), {})}, report) == []
    assert not (tmp_path / "int8").exists()


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def small_labels(tmp_path: Path, shared_data: Path) -> Iterator[Path]:
    """The deepface identities of the labels CSV (about 50 photos: TAR at FAR 1e-3 is measurable)."""
    path = tmp_path / "labels.csv"
    with (shared_data / LABELS).open(newline="", encoding="utf-8") as source:
        rows = [row for row in csv.DictReader(source) if row["path"].startswith("faces/deepface_")]
    with path.open("w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=["path", "identity"])
        writer.writeheader()
        writer.writerows({"path": row["path"], "identity": row["identity"]} for row in rows)
    yield path


def test_calibrate_command_end_to_end(
    tmp_path: Path, shared_models: Path, shared_data: Path, small_labels: Path
) -> None:
    models = _linked_models(tmp_path / "models", shared_models)
    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\ndir = "{models}"\n[storage]\ndir = "{tmp_path / "state"}"\n')
    out = tmp_path / "calibration"
    common = [
        "--labelled",
        str(shared_data),
        "--labels",
        str(small_labels),
        "--out",
        str(out),
        "--no-progress",
    ]

    usage = run_cli("calibrate", "--config", str(config), "--models", "mobilefacenet")
    assert usage.returncode == 2 and "--labelled" in usage.stderr

    passed = run_cli(
        "calibrate", "--config", str(config), "--models", "mobilefacenet", "--max-count", "48",
        "--images", str(shared_data / "multi_face"), str(shared_data / "antispoof"), *common,
    )  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "gate embedder (mobilefacenet): passed" in passed.stdout
    sets = json.loads((out / "sets.json").read_text())
    assert list(sets["sets"]) == ["mobilefacenet"] and sets["sets"]["mobilefacenet"]["count"] == 48
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["groups"]["embedder"]["passed"] is True
    assert report["embedder"]["cosine"]["mean"] >= 0.99
    assert any("mobilefacenet: only 48" in w for w in report["calibration_set_warnings"])  # below 100
    assert (out / "report.png").is_file()
    index = json.loads((models / "int8" / INDEX_FILE).read_text())
    assert list(index["models"]) == ["mobilefacenet"] and index["models"]["mobilefacenet"]["gate_passed"]
    assert (models / "int8" / int8_file(get_model("mobilefacenet"))).is_file()

    # An impossible limit: the same sets (reused, no --images), the gate fails, nothing is installed.
    strict_models = _linked_models(tmp_path / "strict-models", shared_models)
    strict = tmp_path / "strict.toml"
    strict.write_text(
        f'[models]\ndir = "{strict_models}"\n[storage]\ndir = "{tmp_path / "state"}"\n'
        "[calibration]\nmin_cosine_mean = 1.0\n"
    )
    failed = run_cli("calibrate", "--config", str(strict), "--models", "mobilefacenet", *common)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "limit failed" in failed.stdout and "min_cosine_mean" in failed.stdout
    assert not (strict_models / "int8").exists()
