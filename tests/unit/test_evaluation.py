"""Verification metrics on scores whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.evaluation import (
    door_protocol,
    equal_error_rate,
    far_key,
    pair_scores,
    roc_auc,
    threshold_at_far,
    verification_report,
)


def test_far_keys() -> None:
    assert [far_key(f) for f in (1e-1, 1e-2, 1e-3)] == ["0.1", "0.01", "0.001"]


def test_pairs_are_split_by_label() -> None:
    embeddings = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    genuine, impostor = pair_scores(embeddings, ["a", "a", "b", "c"])
    assert genuine.tolist() == [1.0]
    assert sorted(impostor.tolist()) == [0.0] * 5


def test_auc_counts_ties_as_half() -> None:
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    # Against a brute-force count on random scores.
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(1, 1, 300).round(1), rng.normal(0, 1, 400).round(1)
    brute = ((genuine[:, None] > impostor[None]) + 0.5 * (genuine[:, None] == impostor[None])).mean()
    assert roc_auc(genuine, impostor) == pytest.approx(brute)


def test_threshold_at_far_admits_at_most_that_share() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 … 0.999
    for far in (0.1, 0.01, 0.001):
        threshold = threshold_at_far(impostor, far)
        assert np.mean(impostor >= threshold) <= far
        # … and is the lowest such threshold: one step lower admits more.
        assert np.mean(impostor >= np.nextafter(threshold, -np.inf) - 1e-3) > far


def test_eer_of_separable_and_overlapping_scores() -> None:
    eer, threshold = equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2]))
    assert eer == 0.0 and 0.2 < threshold <= 0.8
    eer, _ = equal_error_rate(np.array([0.3, 0.6, 0.7, 0.9]), np.array([0.1, 0.2, 0.4, 0.8]))
    assert eer == pytest.approx(0.25)


def test_report_says_what_it_cannot_measure() -> None:
    rng = np.random.default_rng(1)
    report = verification_report(rng.normal(0.7, 0.1, 50), rng.normal(0.0, 0.1, 500))
    assert report.tar_at_far["0.1"] is not None and report.tar_at_far["0.01"] is not None
    assert report.tar_at_far["0.001"] is None and report.thresholds["0.001"] is None
    assert "needs at least 1000 impostor pairs, have 500" in report.notes[0]
    document = report.to_json()
    assert document["pairs"] == {"genuine": 50, "impostor": 500}
    with pytest.raises(ValueError, match="genuine and impostor"):
        verification_report(np.array([]), np.array([0.1]))


def _unit(vector: list) -> np.ndarray:
    array = np.asarray(vector, np.float64)
    return array / np.linalg.norm(array)


def test_door_protocol_enrols_the_first_photos_and_identifies_the_rest() -> None:
    ada, bob, cy = np.eye(3)
    embeddings = np.stack(
        [
            _unit(ada),  # ada's first photo: enrolled
            _unit(ada + 0.3 * bob),  # granted as ada (0.96)
            _unit(ada + 1.2 * bob),  # closer to bob than to ada: rank-1 wrong, granted as bob
            _unit(bob),  # bob's first photo: enrolled
            _unit(bob + 1.5 * cy),  # bob, but below the threshold (0.55 < 0.6): not granted
            _unit(cy),  # cy has one photo: a stranger, not granted (0.0)
            _unit(cy + bob),  # dee, one photo: a stranger granted as bob (0.71)
        ]
    ).astype(np.float32)
    labels = ["ada", "ada", "ada", "bob", "bob", "cy", "dee"]
    report = door_protocol(embeddings, labels, per_identity=1, threshold=0.6)
    assert (report.enrolled_identities, report.templates) == (2, 2)
    assert (report.genuine, report.granted, report.granted_wrong, report.rank1) == (3, 1, 1, 2)
    assert (report.strangers, report.strangers_granted) == (2, 1)
    figures = report.to_json()
    assert figures["granted_rate"] == round(1 / 3, 4) and figures["rank1"] == round(2 / 3, 4)
    assert figures["genuine_score"]["max"] == pytest.approx(0.9578, abs=1e-4)

    # Two photos enrolled: only ada has a photo left to identify; bob, with two photos, is not
    # enrolled, so his photos are strangers' too.
    two = door_protocol(embeddings, labels, per_identity=2, threshold=0.6)
    assert (two.enrolled_identities, two.templates, two.genuine, two.strangers) == (1, 2, 1, 4)
    # Nobody with enough photos: every photo is a stranger's.
    none = door_protocol(embeddings, labels, per_identity=5, threshold=0.6)
    assert (none.enrolled_identities, none.genuine, none.strangers, none.strangers_granted) == (0, 0, 7, 0)
    with pytest.raises(ValueError, match="at least 1"):
        door_protocol(embeddings, labels, per_identity=0, threshold=0.6)
