"""Detection on the real images of ../shared/data, with the real models, checked against references.

References: the MANIFEST's observed face counts; the original Caffe MTCNN weights run through
OpenCV DNN (an independent runtime and encoding of the same network); and a plain-loop
reimplementation of P-Net's box generation for one pyramid level.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Dict, Iterator, List

import cv2
import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import load_analyzer
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.boxes import nms, pyramid
from appliance.vision.image import read_image
from appliance.vision.mtcnn import MtcnnDetector, MtcnnSettings
from engines.backends.cpu import OnnxRuntimeBackend
from engines.registry import get_model

SINGLE_FACE_DIRS = ("faces", "edge_cases")


def _analyzer(models: Path, **detector: object) -> FaceAnalyzer:
    config = validate_config({"models": {"dir": str(models)}, "detector": {"min_face_px": 20, **detector}})
    return load_analyzer(config, liveness=False)


@pytest.fixture(scope="module")
def mtcnn(shared_models: Path) -> Iterator[FaceAnalyzer]:
    with _analyzer(shared_models) as analyzer:
        yield analyzer


def _manifest_counts(data: Path, column: int) -> Dict[str, int]:
    counts = {}
    for line in (data / "MANIFEST.md").read_text().splitlines():
        match = re.match(r"\| `(multi_face/[^`]+)` \| \S+ \| (\d+) \| (\d+) \|", line)
        if match:
            counts[match.group(1)] = int(match.group(column))
    assert len(counts) == 13, "the MANIFEST's table of observed counts was not found"
    return counts


def test_no_face_on_any_no_face_image(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    images = sorted((shared_data / "no_face").iterdir())
    assert len(images) == 6
    for path in images:
        assert len(mtcnn.detect(read_image(path), still=True)) == 0, path.name


def test_a_face_on_every_single_identity_photo(shared_models: Path, shared_data: Path) -> None:
    default = load_analyzer(validate_config({"models": {"dir": str(shared_models)}}), liveness=False)
    paths: List[Path] = []
    for folder in SINGLE_FACE_DIRS:
        paths.extend(p for p in sorted((shared_data / folder).rglob("*")) if p.is_file())
    assert len(paths) >= 100
    with default:
        missed = [p.name for p in paths if len(default.detect(read_image(p), still=True)) == 0]
    assert missed == []


def test_multi_face_counts_match_the_manifest(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    for relative, expected in _manifest_counts(shared_data, 2).items():
        found = len(mtcnn.detect(read_image(shared_data / relative)))
        assert abs(found - expected) <= 1, f"{relative}: {found} faces, MANIFEST observed {expected}"


def test_yunet_multi_face_counts_match_the_manifest(shared_models: Path, shared_data: Path) -> None:
    # The MANIFEST ran YuNet at full resolution; so does this test (input_side covers the largest image).
    with _analyzer(shared_models, type="yunet", max_side=4096, yunet={"input_side": 4096}) as yunet:
        for relative, expected in _manifest_counts(shared_data, 3).items():
            found = len(yunet.detect(read_image(shared_data / relative)))
            assert abs(found - expected) <= 1, f"{relative}: {found} faces, MANIFEST observed {expected}"


def test_yunet_finds_single_faces_with_sane_landmarks(shared_models: Path, shared_data: Path) -> None:
    with _analyzer(shared_models, type="yunet") as yunet:
        for path in sorted((shared_data / "faces" / "fr_obama").iterdir()):
            faces = yunet.detect(read_image(path), still=True)
            assert len(faces) >= 1, path.name
            _assert_plausible(faces.boxes[faces.largest()], faces.landmarks[faces.largest()])


def _assert_plausible(box: np.ndarray, points: np.ndarray) -> None:
    x1, y1, x2, y2 = box
    margin = 0.15 * (x2 - x1)
    assert np.all(points[:, 0] > x1 - margin) and np.all(points[:, 0] < x2 + margin)
    assert np.all(points[:, 1] > y1 - margin) and np.all(points[:, 1] < y2 + margin)
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_landmarks_are_where_faces_are(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    for path in (
        sorted((shared_data / "faces" / "fr_biden").iterdir())
        + sorted((shared_data / "faces" / "deepface_personA").iterdir())[:3]
    ):
        faces = mtcnn.detect(read_image(path), still=True)
        index = faces.largest()
        assert index is not None
        _assert_plausible(faces.boxes[index], faces.landmarks[index])


# -- the independent references -----------------------------------------------------------------------


class CaffeNet:
    """An original Caffe MTCNN stage through OpenCV DNN, speaking the registry's ONNX tensor layout."""

    max_rows_per_run = None  # as an InferenceBackend without a batch limit

    def __init__(self, models: Path, name: str, stem: str, outputs: List[str]) -> None:
        self.spec = get_model(name)
        folder = models / "mtcnn_caffe"
        self.net = cv2.dnn.readNetFromCaffe(
            str(folder / f"{stem}.prototxt"), str(folder / f"{stem}.caffemodel")
        )
        self.outputs = outputs

    def run(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        # Registry layout: transposed NHWC; Caffe: transposed NCHW. Same for the outputs.
        self.net.setInput(np.ascontiguousarray(blob.transpose(0, 3, 1, 2)))
        results = self.net.forward(self.outputs)
        return {
            tensor.name: (
                result.transpose(0, 2, 3, 1) if result.ndim == 4 else result.reshape(len(result), -1)
            )
            for tensor, result in zip(self.spec.outputs, results)
        }


def test_onnx_cascade_matches_the_original_caffe_weights(
    mtcnn: FaceAnalyzer, shared_models: Path, shared_data: Path
) -> None:
    caffe = MtcnnDetector(
        CaffeNet(shared_models, "mtcnn-pnet", "det1", ["conv4-2", "prob1"]),  # type: ignore[arg-type]
        CaffeNet(shared_models, "mtcnn-rnet", "det2", ["conv5-2", "prob1"]),  # type: ignore[arg-type]
        CaffeNet(shared_models, "mtcnn-onet", "det3", ["conv6-2", "conv6-3", "prob1"]),  # type: ignore[arg-type]
        MtcnnSettings(min_face=20),
    )
    images = [
        "multi_face/faceapi_bbt1.jpg",
        "multi_face/fr_two_people.jpg",
        "faces/fr_obama/obama.jpg",
        "faces/faceapi_amy/amy1.png",
        "edge_cases/obama_partial_face.jpg",
    ]
    for relative in images:
        image = read_image(shared_data / relative)
        ours = mtcnn.detector.detect(image)
        reference = caffe.detect(image)
        assert len(ours) == len(reference) > 0, relative
        order = np.lexsort(ours.boxes.T[::-1])
        reference_order = np.lexsort(reference.boxes.T[::-1])
        np.testing.assert_allclose(ours.boxes[order], reference.boxes[reference_order], atol=0.01)
        np.testing.assert_allclose(ours.landmarks[order], reference.landmarks[reference_order], atol=0.01)
        np.testing.assert_allclose(ours.scores[order], reference.scores[reference_order], atol=1e-4)


def test_pnet_stage_matches_a_plain_loop_reimplementation(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    detector = mtcnn.detector
    assert isinstance(detector, MtcnnDetector)
    image = read_image(shared_data / "multi_face/fr_two_people.jpg")
    scale = detector.scales(*image.shape[:2])[1]
    pre = detector.pnet.spec.preprocessing
    (level,) = pyramid(image, [scale])
    ours = detector._pnet_candidates([level], [scale])

    # The same level through the general to_blob path (one image at a time is a special case there),
    # then loops.
    outputs = detector.pnet.run(pre.to_blob(np.stack([level[0], level[0]]))[:1])
    regression, probability = outputs["conv2d_4"][0], outputs["softmax"][0]  # (W', H', C): transposed
    rows: List[List[float]] = []
    for col in range(probability.shape[0]):
        for row in range(probability.shape[1]):
            score = float(probability[col, row, 1])
            if score >= detector.settings.thresholds[0]:
                x1, y1 = np.fix((2 * col + 1) / scale), np.fix((2 * row + 1) / scale)
                x2, y2 = np.fix((2 * col + 12) / scale), np.fix((2 * row + 12) / scale)
                rows.append([x1, y1, x2, y2, score, *regression[col, row].tolist()])
    loop = np.array(rows)
    kept = loop[nms(loop[:, :4], loop[:, 4], 0.5, inclusive=True)]
    assert len(kept) == len(ours) > 0
    key = lambda a: a[np.lexsort(a[:, :4].T[::-1])]  # noqa: E731
    np.testing.assert_allclose(key(ours), key(kept), rtol=1e-6, atol=1e-6)


def test_r_net_in_chunks_finds_what_one_call_finds(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    detector = mtcnn.detector
    assert isinstance(detector, MtcnnDetector) and isinstance(detector.rnet, OnnxRuntimeBackend)
    limit = OnnxRuntimeBackend.max_rows_per_run
    assert limit is not None
    image = read_image(shared_data / "multi_face/faceapi_bbt1.jpg")
    rows: List[int] = []
    run = detector.rnet.run
    detector.rnet.run = lambda feeds: rows.append(len(feeds)) or run(feeds)  # type: ignore[method-assign]
    try:
        chunked = detector.detect(image)
        detector.rnet.max_rows_per_run = None  # type: ignore[misc]  # this back-end only, for one call
        whole = detector.detect(image)
    finally:
        del detector.rnet.run
        vars(detector.rnet).pop("max_rows_per_run", None)
    *chunks, one_call = rows  # the chunked detection's R-Net calls, then the unlimited one's
    assert len(chunks) >= 3 and max(chunks) == limit and sum(chunks) == one_call
    assert len(chunked) == len(whole) > 0
    np.testing.assert_array_equal(chunked.boxes, whole.boxes)
    np.testing.assert_array_equal(chunked.scores, whole.scores)
    np.testing.assert_array_equal(chunked.landmarks, whole.landmarks)


class Untransposed:
    """A registry MTCNN stage presented as a network that reads images the plain way (rows along y):
    its spec says ``transpose_hw=False``, and it hands the real network the transposed input it wants
    and its maps back untransposed. The real network sees exactly what the transposed path feeds it."""

    def __init__(self, backend: OnnxRuntimeBackend) -> None:
        self.backend = backend
        pre = dataclasses.replace(backend.spec.preprocessing, transpose_hw=False)
        self.spec = dataclasses.replace(backend.spec, preprocessing=pre)
        self.max_rows_per_run = backend.max_rows_per_run

    def run(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        outputs = self.backend.run(np.ascontiguousarray(blob.transpose(0, 2, 1, 3)))
        return {name: out.transpose(0, 2, 1, 3) if out.ndim == 4 else out for name, out in outputs.items()}


def test_an_untransposed_mtcnn_finds_what_the_registry_one_finds(
    mtcnn: FaceAnalyzer, shared_data: Path
) -> None:
    # The detector supports networks either way round; the registry's read images transposed, so
    # this checks the other way (P-Net's inputs and map indices, the patches) on the same networks.
    detector = mtcnn.detector
    assert isinstance(detector, MtcnnDetector) and detector.pnet.spec.preprocessing.transpose_hw
    plain = MtcnnDetector(
        *(Untransposed(net) for net in (detector.pnet, detector.rnet, detector.onet)),  # type: ignore[arg-type]
        detector.settings,
        detector.max_batch,
    )
    found = 0
    for relative in (
        "multi_face/faceapi_bbt1.jpg",
        "multi_face/fr_two_people.jpg",
        "faces/fr_obama/obama.jpg",
    ):
        image = read_image(shared_data / relative)
        ours, theirs = plain.detect(image), detector.detect(image)
        np.testing.assert_array_equal(ours.boxes, theirs.boxes, err_msg=relative)
        np.testing.assert_array_equal(ours.scores, theirs.scores, err_msg=relative)
        np.testing.assert_array_equal(ours.landmarks, theirs.landmarks, err_msg=relative)
        found += len(ours)
    assert found >= 7


# -- awkward inputs ------------------------------------------------------------------------------------


def test_grayscale_rgba_webp_and_odd_sizes(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    rgba = read_image(shared_data / "edge_cases/32bit.png")  # decoded from a 4-channel PNG
    assert rgba.shape[2] == 3 and len(mtcnn.detect(rgba, still=True)) == 1
    webp = read_image(shared_data / "edge_cases/deepface_personC_img47_webp.jpg")
    assert len(mtcnn.detect(webp, still=True)) >= 1
    gray = read_image(shared_data / "faces/faceapi_amy/amy1.png")  # 150×150 grayscale tight crop
    assert len(mtcnn.detect(gray, still=True)) == 1
    photo = read_image(shared_data / "faces/fr_obama/obama.jpg")
    x1, y1, x2, y2 = mtcnn.detect(photo).boxes[0].astype(int)
    side = x2 - x1
    around = photo[max(0, y1 - side // 2) : y2 + side // 2, max(0, x1 - side // 2) : x2 + side // 3]
    # Odd on both sides whatever the box's exact corners: halvings drop a row and a column.
    odd = np.ascontiguousarray(around[: around.shape[0] // 2 * 2 - 1, : around.shape[1] // 2 * 2 - 1])
    assert odd.shape[0] % 2 == 1 and odd.shape[1] % 2 == 1
    assert len(mtcnn.detect(odd, still=True)) == 1


def test_tight_crops_need_the_padded_retry(mtcnn: FaceAnalyzer, shared_data: Path) -> None:
    photo = read_image(shared_data / "faces/fr_obama/obama.jpg")
    faces = mtcnn.detect(photo, still=True)
    x1, y1, x2, y2 = faces.boxes[faces.largest()].astype(int)
    tight = np.ascontiguousarray(photo[max(0, y1) : y2, max(0, x1) : x2])
    found = mtcnn.detect(tight, still=True)
    assert len(found) == 1
    # Mapped back into the tight crop's own coordinates (the retry pads, then shifts back).
    box = found.boxes[0]
    assert -0.3 * tight.shape[1] < box[0] < 0.5 * tight.shape[1]
