"""ISO/IEC 30107-3 figures on live scores whose answers are counted by hand, and the liveness labels file."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from appliance import liveness_evaluation
from appliance.liveness_evaluation import (
    LivenessEvaluationError,
    LivenessLabelsError,
    PresentationResult,
    bpcer_name,
    operating_curve,
    operating_point,
    pad_report,
    rate_key,
    read_presentations,
    report_lines,
    threshold_at_apcer,
    upper_bound,
)

BONA = np.array([0.9, 0.5, 0.3, 0.7])
ATTACKS: Dict[str, np.ndarray] = {"print": np.array([0.6, 0.2]), "replay": np.array([0.5, 0.1, 0.05])}


def _results(scores: Dict[str, List[object]]) -> List[PresentationResult]:
    return [
        PresentationResult(f"{label}/{i}.jpg", label, 0 if score is None else 1, score)  # type: ignore[arg-type]
        for label, values in scores.items()
        for i, score in enumerate(values)
    ]


# -- the figures ---------------------------------------------------------------------------------------


def test_operating_point_counts_a_score_at_the_threshold_as_bona_fide() -> None:
    point = operating_point(BONA, ATTACKS, 0.5)
    # print: 0.6 passes → 1 of 2; replay: 0.5 sits on the threshold and passes → 1 of 3.
    assert (point.apcer["print"].errors, point.apcer["print"].presentations) == (1, 2)
    assert (point.apcer["replay"].errors, point.apcer["replay"].presentations) == (1, 3)
    assert point.apcer_max == 0.5 and point.apcer_max_species == ["print"]
    # Bona fide: 0.5 on the threshold passes, only 0.3 is refused → 1 of 4.
    assert (point.bpcer.errors, point.bpcer.presentations) == (1, 4)
    assert point.bpcer.rate == 0.25


def test_threshold_at_apcer_is_the_lowest_that_keeps_every_species_under_the_target() -> None:
    # 5 %: no print (2) and no replay (3) attack may pass → just above the highest attack, 0.6.
    strict = threshold_at_apcer(ATTACKS, 0.05)
    assert strict == np.nextafter(0.6, 1.0)
    point = operating_point(BONA, ATTACKS, strict)
    assert point.apcer_max == 0.0
    assert point.bpcer.errors == 2  # 0.5 and 0.3 are refused; 0.9 and 0.7 reach it
    # 50 %: one print of 2 may pass (threshold above 0.2), one replay of 3 (above 0.1): the higher wins.
    half = threshold_at_apcer(ATTACKS, 0.5)
    assert half == np.nextafter(0.2, 1.0)
    point = operating_point(BONA, ATTACKS, half)
    assert point.apcer["print"].rate == 0.5 and point.apcer["replay"].errors == 1
    assert point.bpcer.errors == 0
    # Any lower threshold seen in the data breaks the target for print.
    assert operating_point(BONA, ATTACKS, 0.2).apcer["print"].rate > 0.5


def test_tied_attacks_pass_or_fail_together() -> None:
    attacks = {"mask": np.array([0.4, 0.4, 0.4, 0.1])}
    # 50 % allows 2 of 4 to pass, but the three at 0.4 cannot be split: none of them passes.
    threshold = threshold_at_apcer(attacks, 0.5)
    assert threshold == np.nextafter(0.4, 1.0)
    point = operating_point(np.array([0.4, 0.8]), attacks, threshold)
    assert point.apcer["mask"].errors == 0
    assert point.bpcer.errors == 1  # the bona fide at 0.4 is refused with them


def test_threshold_targets_must_lie_between_0_and_1() -> None:
    for target in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            threshold_at_apcer(ATTACKS, target)


def test_upper_bound_by_hand() -> None:
    assert upper_bound(0, 1) == pytest.approx(0.95)
    assert upper_bound(0, 100) == pytest.approx(1 - 0.05**0.01)  # ≈ 3 / 100, the rule of three
    assert upper_bound(3, 3) == 1.0
    bound = upper_bound(1, 10)
    assert bound == pytest.approx(0.3942, abs=1e-4)
    # It is where seeing at most one error in ten has probability 5 %.
    assert (1 - bound) ** 10 + 10 * bound * (1 - bound) ** 9 == pytest.approx(0.05, abs=1e-9)
    bound = upper_bound(5, 40)
    assert 5 / 40 < bound < 1
    assert sum(math.comb(40, k) * bound**k * (1 - bound) ** (40 - k) for k in range(6)) == pytest.approx(
        0.05, abs=1e-9
    )
    with pytest.raises(ValueError):
        upper_bound(0, 0)


def test_bpcer_names_follow_the_standard() -> None:
    assert [bpcer_name(t) for t in (0.05, 0.1, 0.01)] == ["BPCER20", "BPCER10", "BPCER100"]
    assert [rate_key(t) for t in (0.05, 0.1)] == ["0.05", "0.1"]


def test_operating_curve_by_hand() -> None:
    thresholds, apcer, bpcer = operating_curve(
        np.array([0.8, 0.4]), {"print": np.array([0.6]), "replay": np.array([0.2])}
    )
    assert thresholds.tolist()[:4] == [0.2, 0.4, 0.6, 0.8] and thresholds[4] == np.nextafter(0.8, 1.0)
    assert apcer.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert bpcer.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_report_keeps_non_responses_out_of_the_error_rates() -> None:
    results = _results(
        {
            "bona_fide": [0.9, 0.5, 0.3, 0.7, None],
            "print": [0.6, 0.2, None],
            "replay": [0.5, 0.1, 0.05],
            "mask": [None, None],
        }
    )
    report = pad_report(results, 0.5)
    configured = report.configured
    assert configured.bpcer.errors == 1 and configured.bpcer.presentations == 4
    assert set(configured.apcer) == {"print", "replay"}  # mask has no answered presentation
    assert configured.apcer["print"].presentations == 2
    assert report.presentations["bona_fide"] == {"labelled": 5, "scored": 4, "no_face": 1}
    assert report.presentations["mask"] == {"labelled": 2, "scored": 0, "no_face": 2}
    assert report.non_response["bona_fide"].rate == 0.2
    assert report.non_response["print"].errors == 1 and report.non_response["mask"].rate == 1.0
    assert any(note.startswith("mask: no face found in any of its 2") for note in report.notes)
    # 5 % and 10 % are finer than 2 or 3 presentations can show.
    assert sum("is finer than the APCER can move" in note for note in report.notes) == 2
    document = report.to_json()
    assert set(document) == {
        "standard",
        "decision",
        "presentations",
        "configured_threshold",
        "bpcer_at_apcer",
        "non_response",
        "no_face",
        "scores",
        "notes",
    }
    assert set(document["bpcer_at_apcer"]) == {"0.05", "0.1"}
    assert document["bpcer_at_apcer"]["0.05"]["threshold"] == np.nextafter(0.6, 1.0)
    assert document["bpcer_at_apcer"]["0.05"]["bpcer"]["errors"] == 2
    assert document["configured_threshold"]["apcer"]["print"] == {
        "rate": 0.5,
        "errors": 1,
        "presentations": 2,
        "upper_95": pytest.approx(upper_bound(1, 2)),
    }
    assert document["non_response"]["bpnrr"]["errors"] == 1
    assert set(document["non_response"]["apnrr"]) == {"mask", "print", "replay"}
    assert {item["path"] for item in document["no_face"]} == {
        "bona_fide/4.jpg",
        "print/2.jpg",
        "mask/0.jpg",
        "mask/1.jpg",
    }
    assert len(document["scores"]) == len(results)
    text = "\n".join(report_lines(report))
    assert "APCER print" in text and "BPCER20 (APCER <= 5 %)" in text and "no face: mask/1.jpg (mask)" in text


def test_no_resolution_note_with_enough_attacks() -> None:
    results = _results({"bona_fide": [0.9, 0.8], "print": [i / 100 for i in range(20)]})
    report = pad_report(results, 0.5)
    assert not any("finer" in note for note in report.notes)
    # 20 prints: at 5 % exactly one (the highest, 0.19) may pass.
    assert report.at_apcer["0.05"].threshold == np.nextafter(0.18, 1.0)
    assert report.at_apcer["0.05"].apcer["print"].errors == 1


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ({"print": [0.1]}, "no row is labelled bona_fide"),
        ({"bona_fide": [None, None], "print": [0.1]}, "no face was found in any of the 2 labelled bona fide"),
        ({"bona_fide": [0.9]}, "no row is labelled with an attack type"),
        ({"bona_fide": [0.9], "replay": [None]}, "no face was found in any of the 1 labelled attack"),
    ],
)
def test_an_empty_class_is_a_clear_error(scores: Dict[str, List[object]], message: str) -> None:
    with pytest.raises(LivenessEvaluationError, match=message):
        pad_report(_results(scores), 0.5)


# -- the labels file -----------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "live").mkdir(parents=True)
    for name in ("live/a.jpg", "live/b.jpg", "print.jpg", "screen.jpg"):
        (root / name).write_bytes(b"not decoded here")
    return root


def _labels(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file(tmp_path: Path, folder: Path) -> None:
    labels = _labels(
        tmp_path,
        "\ufefflabel,path\nbona_fide,live/a.jpg\n\nbona_fide,./live/b.jpg\nprint,print.jpg\nreplay,screen.jpg\n",
    )
    found = read_presentations(labels, folder)
    assert [(p.path, p.label, p.line) for p in found] == [
        ("live/a.jpg", "bona_fide", 2),
        ("./live/b.jpg", "bona_fide", 4),
        ("print.jpg", "print", 5),
        ("screen.jpg", "replay", 6),
    ]
    assert found[1].file == (folder / "live/b.jpg").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("path,label,note\nprint.jpg,print,x\n", "unknown column(s) 'note'"),
        ("path,identity\nprint.jpg,print\n", "missing label"),
        ("path,label,label\nprint.jpg,print,print\n", "exactly 'path,label'"),
        (
            "path,label\nprint.jpg,bonafide\n",
            "line 2: unknown label 'bonafide' (allowed: bona_fide, print, replay, mask, cutout, other); did you mean 'bona_fide'?",
        ),
        ("path,label\nprint.jpg,Print\n", "line 2: unknown label 'Print'"),
        (
            "path,label\nlive/a.jpg,bona_fide\n./live/a.jpg,bona_fide\n",
            "line 3: './live/a.jpg' is listed again (first on line 2)",
        ),
        ("path,label\nlive/c.jpg,bona_fide\n", "line 2: path 'live/c.jpg': no such file"),
        ("path,label\nlive,bona_fide\n", "line 2: path 'live': no such file"),
        ("path,label\n../labels.csv,print\n", "line 2: path '../labels.csv' is not inside the folder"),
        ("path,label\n/etc/hostname,print\n", "line 2: path '/etc/hostname' is not inside the folder"),
        ("path,label\nlive\\a.jpg,print\n", "contains a backslash"),
        ("path,label\n print.jpg,print\n", "leading or trailing spaces"),
        ('path,label\n"print\n.jpg",print\n', "contains a control character"),
        ("path,label\nprint.jpg\n", "line 2: 1 value(s), expected 2"),
        ("path,label\nprint.jpg,print,extra\n", "line 2: 3 value(s), expected 2"),
        ("path,label\n,print\n", "line 2: empty path"),
        ("path,label\nprint.jpg,\n", "line 2: empty label"),
        ('path,label\n"print.jpg"x,print\n', "line 2: not valid CSV"),
        ("", "empty; expected the header"),
        ("path,label\n", "no rows"),
    ],
)
def test_a_bad_file_names_the_row(tmp_path: Path, folder: Path, text: str, expected: str) -> None:
    with pytest.raises(LivenessLabelsError) as caught:
        read_presentations(_labels(tmp_path, text), folder)
    assert expected in str(caught.value)


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path, folder: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, folder / "inside.jpg")
    with pytest.raises(LivenessLabelsError, match=r"line 2: path 'inside.jpg' leads out of the folder"):
        read_presentations(_labels(tmp_path, "path,label\ninside.jpg,print\n"), folder)


def test_every_bad_row_is_listed_up_to_a_bound(tmp_path: Path, folder: Path) -> None:
    rows = "".join(f"missing{i}.jpg,print\n" for i in range(25))
    with pytest.raises(LivenessLabelsError) as caught:
        read_presentations(_labels(tmp_path, "path,label\n" + rows), folder)
    message = str(caught.value)
    assert "25 bad row(s)" in message and "line 21:" in message and "line 22:" not in message
    assert "… and 5 more" in message


def test_size_and_row_bounds(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _labels(tmp_path, "path,label\nprint.jpg,print\nscreen.jpg,replay\nlive/a.jpg,bona_fide\n")
    monkeypatch.setattr(liveness_evaluation, "MAX_PRESENTATIONS", 2)
    with pytest.raises(LivenessLabelsError, match="more than 2 rows"):
        read_presentations(labels, folder)
    monkeypatch.setattr(liveness_evaluation, "MAX_LABELS_BYTES", 20)
    with pytest.raises(LivenessLabelsError, match="the labels file"):
        read_presentations(labels, folder)


def test_unreadable_labels_and_a_missing_folder(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(LivenessLabelsError, match="the labels file"):
        read_presentations(tmp_path / "none.csv", folder)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"path,label\n\xff\xfe,print\n")
    with pytest.raises(LivenessLabelsError, match="UTF-8"):
        read_presentations(binary, folder)
    with pytest.raises(LivenessLabelsError, match="not a folder"):
        read_presentations(_labels(tmp_path, "path,label\nprint.jpg,print\n"), tmp_path / "nowhere")
