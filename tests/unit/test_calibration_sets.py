"""Calibration-set assembly on small synthetic inputs: source order, decoding and skipping, P-Net tiles,
thinning to a maximum count, warnings, the files and their checks; the gate's pure logic; and the
appliance's side of the calibration interfaces (file decoder, labelled folders, measures)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest

from appliance.calibration_inputs import ApplianceMeasures, FileDecoder, labelled_items
from appliance.config import CalibrationConfig
from appliance.evaluation import far_key
from appliance.vision.boxes import iou_matrix
from calibration.errors import CalibrationDataError, SourceError
from calibration.report import GATED_FARS, GROUPS, gate, match_overlaps
from calibration.sets import (
    CALIBRATED_MODELS,
    PNET_TILE,
    SETS_FILE,
    Collector,
    Skipped,
    Source,
    evenly,
    iter_frames,
    list_sources,
    load_set,
    pnet_tiles,
    read_sets,
    resolve_models,
    sample_shape,
    write_sets,
)
from engines.int8 import find_int8, install, int8_file
from engines.registry import get_model


def _image(path: Path, value: int, size: tuple = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))
    return path


def _video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(np.full((48, 64, 3), 10 * index, np.uint8))
    writer.release()
    return path


# -- sources ---------------------------------------------------------------------------------------


def test_sources_are_sorted_by_relative_path_and_filtered(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for relative in ("b/2.png", "b/10.png", "a.jpg", "c/deep/x.JPG", ".hidden/h.jpg", "c/.dot.jpg"):
        _image(root / relative, 100)
    (root / "notes.md").write_text("not an image")
    _video(root / "clip.avi", 3)
    extra = _image(tmp_path / "single.webp", 50)

    sources = list_sources([root, extra, root / "a.jpg"])

    relative = [s.path.relative_to(tmp_path).as_posix() for s in sources]
    assert relative == [
        "data/a.jpg",
        "data/b/10.png",  # plain string order of the relative path
        "data/b/2.png",
        "data/c/deep/x.JPG",
        "data/clip.avi",
        "single.webp",  # a file given directly comes after, and a repeated one is listed once
    ]
    assert [s.kind for s in sources] == ["image"] * 4 + ["video", "image"]


def test_a_missing_source_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="does not exist"):
        list_sources([tmp_path / "absent"])


def test_undecodable_sources_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _image(tmp_path / "1-good.png", 80)
    broken = tmp_path / "2-broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a whole JPEG")
    empty = tmp_path / "3-empty.png"
    empty.write_bytes(b"")
    not_video = tmp_path / "4-not-a-video.mp4"
    not_video.write_bytes(b"\x00" * 100)
    video = _video(tmp_path / "5-clip.avi", 10)
    sources = list_sources([tmp_path])
    skipped: List[Skipped] = []
    counts: List[int] = []

    with caplog.at_level(logging.WARNING, logger="calibration.sets"):
        frames = list(iter_frames(FileDecoder(), sources, skipped, counts, video_step=3, max_video_frames=3))

    assert [s.path for s in sources] == [good, broken, empty, not_video, video]
    assert counts == [1, 0, 0, 0, 3]  # frames 0, 3, 6 of the video (the cap stops before 9)
    assert [frame.source for frame in frames] == [0, 4, 4, 4]
    assert [frame.still for frame in frames] == [True, False, False, False]
    assert all(frame.image.dtype == np.uint8 and frame.image.shape[2] == 3 for frame in frames)
    # The MJPG frames were written with values 0, 10, 20, …: every third one was taken.
    assert [round(float(frame.image.mean())) for frame in frames[1:]] == pytest.approx([0, 30, 60], abs=3)
    assert [item.path for item in skipped] == [str(broken), str(empty), str(not_video)]
    assert all(item.reason for item in skipped)
    assert sum("skipped" in record.getMessage() for record in caplog.records) == 3


# -- per-frame pieces -------------------------------------------------------------------------------


def test_evenly_spreads_indices_and_keeps_everything_below_the_limit() -> None:
    assert evenly(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert evenly(10, 5).tolist() == [0, 2, 4, 6, 8]
    assert evenly(7, 3).tolist() == [0, 2, 4]
    assert evenly(0, 3).tolist() == []
    for count in range(1, 40):
        for limit in range(1, 12):
            picked = evenly(count, limit)
            assert len(picked) == min(count, limit)
            assert len(set(picked.tolist())) == len(picked) and picked.max() < count


def test_pnet_tiles_cut_a_grid_and_pad_small_levels() -> None:
    level = np.arange(1 * 150 * 200 * 3, dtype=np.float32).reshape(1, 150, 200, 3)
    tiles = pnet_tiles(level, "NHWC", tile=64, per_level=3)
    # A 2 x 3 grid of 64-pixel tiles; three evenly spaced of the six (row-major): 0, 2, 4.
    assert tiles.shape == (3, 64, 64, 3) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles[0], level[0, 0:64, 0:64])
    np.testing.assert_array_equal(tiles[1], level[0, 0:64, 128:192])
    np.testing.assert_array_equal(tiles[2], level[0, 64:128, 64:128])

    small = np.random.default_rng(0).uniform(-1, 1, (1, 20, 70, 3)).astype(np.float32)
    (padded,) = pnet_tiles(small, "NHWC", tile=64, per_level=3)
    np.testing.assert_array_equal(padded[:20, :64], small[0, :, :64])
    np.testing.assert_array_equal(padded[20:, :64], np.repeat(small[0, 19:20, :64], 44, axis=0))

    nchw = np.ascontiguousarray(level.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(pnet_tiles(nchw, "NCHW", 64, 3), tiles.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError):
        pnet_tiles(level[0], "NHWC")


def test_sample_shapes_follow_each_network_input() -> None:
    assert sample_shape(get_model("mtcnn-pnet")) == (PNET_TILE, PNET_TILE, 3)
    assert sample_shape(get_model("mtcnn-rnet")) == (24, 24, 3)
    assert sample_shape(get_model("mtcnn-onet")) == (48, 48, 3)
    assert sample_shape(get_model("mobilefacenet")) == (3, 112, 112)
    assert sample_shape(get_model("minifasnet-v2")) == (3, 80, 80)
    with pytest.raises(CalibrationDataError):
        sample_shape(get_model("yunet"))


def test_model_names_and_aliases_resolve_in_pipeline_order() -> None:
    assert resolve_models(["mobilefacenet", "pnet"]) == ["mtcnn-pnet", "mobilefacenet"]
    assert resolve_models(["liveness", "mtcnn"]) == [*CALIBRATED_MODELS[:3], *CALIBRATED_MODELS[4:]]
    assert resolve_models(list(CALIBRATED_MODELS)) == list(CALIBRATED_MODELS)
    with pytest.raises(CalibrationDataError, match="yunet"):
        resolve_models(["yunet"])
    with pytest.raises(CalibrationDataError):
        resolve_models(["", " "])


# -- assembling --------------------------------------------------------------------------------------


def _tagged(source: int, count: int, shape: tuple) -> np.ndarray:
    """Samples whose every value is ``source * 100 + index`` (so order survives any reshaping)."""
    values = source * 100 + np.arange(count, dtype=np.float32)
    return np.broadcast_to(values.reshape(-1, *[1] * len(shape)), (count, *shape)).copy()


def test_collector_keeps_arrival_order_thins_evenly_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    shape = (3, 4, 4)
    collector = Collector({"mobilefacenet": shape, "minifasnet-v2": shape})
    collector.add("mobilefacenet", 0, _tagged(0, 3, shape))
    collector.add("mobilefacenet", 1, _tagged(1, 0, shape))  # a frame without a face
    collector.add("mobilefacenet", 2, _tagged(2, 5, shape))
    collector.add("minifasnet-v2", 2, _tagged(2, 2, shape))
    with pytest.raises(ValueError, match="shape"):
        collector.add("mobilefacenet", 3, np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="no calibration set"):
        collector.add("mtcnn-rnet", 0, np.zeros((1, 24, 24, 3), np.float32))

    with caplog.at_level(logging.WARNING, logger="calibration.sets"):
        sets = collector.assemble(max_count=4, minimums={"mobilefacenet": 4, "minifasnet-v2": 3})

    embedder = sets["mobilefacenet"]
    assert embedder.available == 8 and embedder.sources == 2 and embedder.count == 4
    # 8 samples in arrival order (0,1,2 from source 0, then 200…204), every second one kept.
    assert embedder.data[:, 0, 0, 0].tolist() == [0, 2, 201, 203]
    assert embedder.data.dtype == np.float32 and embedder.data.flags["C_CONTIGUOUS"]
    assert embedder.data.shape == (4, *shape)
    assert embedder.warning is None
    liveness = sets["minifasnet-v2"]
    assert liveness.count == 2 and liveness.warning is not None and "only 2" in liveness.warning
    assert "add face images" in liveness.warning
    assert any("only 2" in record.getMessage() for record in caplog.records)
    capped = collector.assemble(max_count=4, minimums={"mobilefacenet": 6})["mobilefacenet"]
    assert capped.warning is not None and "raise the maximum count (4)" in capped.warning


def test_an_empty_set_has_the_right_shape_and_a_warning() -> None:
    sets = Collector({"mtcnn-onet": (48, 48, 3)}).assemble(max_count=10)
    assert sets["mtcnn-onet"].data.shape == (0, 48, 48, 3)
    assert sets["mtcnn-onet"].warning is not None


def test_sets_are_written_with_their_index_and_checked_when_read(tmp_path: Path) -> None:
    collector = Collector({"mobilefacenet": (3, 112, 112), "mtcnn-onet": (48, 48, 3)})
    collector.add("mobilefacenet", 0, _tagged(0, 6, (3, 112, 112)))
    sets = collector.assemble(max_count=5, minimums={})
    source = _image(tmp_path / "face.png", 90)
    document = write_sets(
        tmp_path / "sets",
        sets,
        [Source(source, "image")],
        [1],
        [Skipped("bad.jpg", "not decodable")],
        5,
        {"min_face_px": 40},
    )

    assert document == read_sets(tmp_path / "sets")
    assert document["counts"]["mobilefacenet"] == 5 and document["counts"]["skipped"] == 1
    entry = document["sets"]["mobilefacenet"]
    assert (
        entry["shape"] == [5, 3, 112, 112]
        and entry["layout"] == "NCHW"
        and entry["file"] == "mobilefacenet.npy"
    )
    assert entry["preprocessing"]["mean"] == list(get_model("mobilefacenet").preprocessing.mean)
    assert document["sources"][0]["sha256"] and document["created"].endswith("Z")
    assert document["sets"]["mtcnn-onet"]["count"] == 0 and document["sets"]["mtcnn-onet"]["file"] is None
    assert document["sets"]["mtcnn-onet"]["transpose_hw"] is True

    loaded = load_set(tmp_path / "sets", "mobilefacenet")
    np.testing.assert_array_equal(loaded, sets["mobilefacenet"].data)
    assert loaded.dtype == np.float32
    mapped = load_set(tmp_path / "sets", "mobilefacenet", verify=False, mmap=True)
    np.testing.assert_array_equal(mapped, loaded)
    with pytest.raises(CalibrationDataError, match="empty"):
        load_set(tmp_path / "sets", "mtcnn-onet")
    with pytest.raises(CalibrationDataError, match="no calibration set"):
        load_set(tmp_path / "sets", "mtcnn-rnet")

    np.save(tmp_path / "sets" / "mobilefacenet.npy", np.zeros((2, 3, 112, 112), np.float32))
    with pytest.raises(CalibrationDataError, match="sha256"):
        load_set(tmp_path / "sets", "mobilefacenet")
    with pytest.raises(CalibrationDataError, match="shape"):
        load_set(tmp_path / "sets", "mobilefacenet", verify=False)
    (tmp_path / "sets" / SETS_FILE).write_text(json.dumps({"schema": 99}))
    with pytest.raises(CalibrationDataError, match="schema"):
        read_sets(tmp_path / "sets")
    with pytest.raises(CalibrationDataError, match="does not exist"):
        read_sets(tmp_path)


# -- the gate and the INT8 folder (pure logic) --------------------------------------------------------


def test_boxes_are_matched_one_to_one_best_first() -> None:
    reference = np.array([[0, 0, 10, 10], [100, 100, 120, 120], [0, 0, 9, 10]], np.float32)
    candidate = np.array([[0, 0, 10, 10], [300, 300, 310, 310]], np.float32)
    none = np.zeros((0, 4), np.float32)
    ious = match_overlaps(iou_matrix(reference, candidate))
    assert ious.tolist() == [1.0, 0.0, 0.0]  # the candidate went to the better reference box
    assert match_overlaps(iou_matrix(reference, none)).tolist() == [0.0, 0.0, 0.0]
    assert match_overlaps(iou_matrix(none, candidate)).shape == (0,)
    assert ApplianceMeasures().iou_matrix(reference, candidate).shape == (3, 2)


def test_the_gated_fars_are_the_verification_figures_keys() -> None:
    # The report looks the TARs up in the verification figures by these keys.
    assert GATED_FARS == (far_key(1e-2), far_key(1e-3))


def test_the_file_decoder_reports_unreadable_files_as_source_errors(tmp_path: Path) -> None:
    decoder = FileDecoder()
    image = decoder.read_image(_image(tmp_path / "ok.png", 70))
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(SourceError, match=r"broken\.jpg"):
        decoder.read_image(tmp_path / "broken.jpg")
    with pytest.raises(SourceError, match="does not exist"):
        next(decoder.read_video(tmp_path / "absent.avi"))
    frames = decoder.read_video(_video(tmp_path / "clip.avi", 4))
    assert next(frames).shape == (48, 64, 3)
    frames.close()  # stopping early releases the file
    assert len(list(decoder.read_video(tmp_path / "clip.avi"))) == 4


def _document(agreement: float, cosine: float, drops: Dict[str, object], live: float) -> Dict[str, object]:
    return {
        "detection": {"agreement": agreement},
        "embedder": {"cosine": {"mean": cosine}, "tar_drop": drops},
        "liveness": {"decision_agreement": live},
    }


def test_the_gate_names_each_limit_that_failed() -> None:
    limits = CalibrationConfig()
    everything = list(CALIBRATED_MODELS)
    good = gate(_document(0.99, 0.995, {"0.01": 0.0, "0.001": 0.005}, 0.99), limits, everything)
    assert [r.group for r in good] == list(GROUPS) and all(r.passed for r in good)
    assert len(good[1].checks) == 3

    bad = gate(_document(0.97, 0.985, {"0.01": 0.02, "0.001": 0.0}, 0.5), limits, everything)
    failures = {r.group: r.failures for r in bad}
    assert not any(r.passed for r in bad)
    assert "min_detection_agreement" in failures["mtcnn"][0]
    assert {f.split(" ")[0] for f in failures["embedder"]} == {"mean", "TAR"}
    assert any("min_cosine_mean" in f for f in failures["embedder"])
    assert any("FAR 0.01" in f and "max_tar_drop" in f for f in failures["embedder"])
    assert "min_liveness_agreement" in failures["liveness"][0]

    # Only the groups with a quantized model are judged; TAR at 1e-3 unmeasurable is a note, at 1e-2 a failure.
    only = gate(_document(0.0, 0.999, {"0.01": 0.0, "0.001": None}, 0.0), limits, ["mobilefacenet"])
    assert [r.group for r in only] == ["embedder"] and only[0].passed and only[0].notes
    unmeasured = gate(_document(0.0, 0.999, {"0.01": None, "0.001": None}, 0.0), limits, ["mobilefacenet"])
    assert not unmeasured[0].passed
    missing = gate({"detection": None}, limits, ["mtcnn-onet"])
    assert missing[0].models == ("mtcnn-onet",) and not missing[0].passed
    strict = gate(
        _document(1.0, 0.999, {"0.01": 0.0}, 1.0), CalibrationConfig(min_cosine_mean=1.0), everything
    )
    assert [r.passed for r in strict] == [True, False, True]


def test_labelled_folder_by_sub_folder_or_by_csv(tmp_path: Path) -> None:
    _image(tmp_path / "alice" / "2.png", 10)
    _image(tmp_path / "alice" / "1.png", 20)
    _image(tmp_path / "bob" / "x.jpg", 30)
    (tmp_path / "bob" / "readme.txt").write_text("-")
    items = labelled_items(tmp_path)
    assert [(i.path.relative_to(tmp_path).as_posix(), i.identity) for i in items] == [
        ("alice/1.png", "alice"),
        ("alice/2.png", "alice"),
        ("bob/x.jpg", "bob"),
    ]
    labels = tmp_path / "labels.csv"
    labels.write_text("path,identity\nbob/x.jpg,robert\nalice/1.png,alice\n")
    assert [(i.path.name, i.identity) for i in labelled_items(tmp_path, labels)] == [
        ("x.jpg", "robert"),
        ("1.png", "alice"),
    ]
    with pytest.raises(CalibrationDataError):
        labelled_items(tmp_path / "absent")
    with pytest.raises(CalibrationDataError):
        labelled_items(tmp_path / "alice")  # no sub-folders: nothing labelled


def test_installed_int8_models_are_found_only_when_intact_and_passed(tmp_path: Path) -> None:
    spec = get_model("mobilefacenet")
    assert int8_file(spec) == "mobilefacenet_foamliu/MobileFaceNet.int8.onnx"
    path, reason = find_int8(tmp_path, spec)
    assert path is None and "calibrate" in reason

    install(tmp_path, spec, b"qdq model bytes", {"gate_passed": True, "method": "percentile"})
    path, detail = find_int8(tmp_path, spec)
    assert path == tmp_path / int8_file(spec) and "percentile" in detail
    assert find_int8(tmp_path, get_model("mtcnn-pnet"))[0] is None

    path.write_bytes(b"altered")
    assert "sha256" in find_int8(tmp_path, spec)[1]
    install(tmp_path, spec, b"qdq model bytes", {"gate_passed": False})
    assert "did not pass" in find_int8(tmp_path, spec)[1]
    index = json.loads((tmp_path / "int8.json").read_text())
    index["models"]["mobilefacenet"].update(gate_passed=True, source_sha256="0" * 64)
    (tmp_path / "int8.json").write_text(json.dumps(index))
    assert "another" in find_int8(tmp_path, spec)[1]
    (tmp_path / "int8.json").write_text("{not json")
    assert find_int8(tmp_path, spec)[0] is None
