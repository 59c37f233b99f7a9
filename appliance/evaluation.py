"""Verification accuracy from labelled embeddings: all genuine and impostor pairs, ROC AUC, EER, TAR@FAR.

A pair is accepted when its cosine similarity is at least the threshold. FAR is the share of impostor
pairs accepted, TAR the share of genuine pairs accepted. A FAR target ``f`` can only be measured with
at least ``1/f`` impostor pairs; below that the TAR is reported as not measurable, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_FARS: Tuple[float, ...] = (1e-1, 1e-2, 1e-3)


def far_key(far: float) -> str:
    """The FAR as the report's dictionary key: ``0.001`` → ``"0.001"``."""
    return f"{far:.10f}".rstrip("0").rstrip(".")


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every unordered pair, split by whether the labels agree.

    Args:
        embeddings: ``(N, D)`` float32 unit vectors.
        labels: ``N`` identity labels.

    Returns:
        ``(genuine, impostor)`` float64 score arrays.
    """
    labels_array = np.asarray(labels)
    similarity = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    first, second = np.triu_indices(len(labels_array), k=1)
    same = labels_array[first] == labels_array[second]
    scores = similarity[first, second]
    return scores[same], scores[~same]


@dataclass
class VerificationReport:
    """The figures ``evaluate`` prints and writes (see :meth:`to_json`)."""

    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: Dict[str, Optional[float]]
    thresholds: Dict[str, Optional[float]]
    genuine: int
    impostor: int
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "tar_at_far": self.tar_at_far,
            "thresholds": self.thresholds,
            "pairs": {"genuine": self.genuine, "impostor": self.impostor},
            "notes": self.notes,
        }


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC: P(genuine score > impostor score), ties counting one half."""
    ordered = np.sort(impostor)
    below = np.searchsorted(ordered, genuine, side="left")
    at_or_below = np.searchsorted(ordered, genuine, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(genuine) * len(impostor)))


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> Tuple[float, float]:
    """``(EER, threshold)``: where the false accept and false reject rates cross."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    impostor_sorted = np.sort(impostor)
    genuine_sorted = np.sort(genuine)
    far = 1.0 - np.searchsorted(impostor_sorted, thresholds, side="left") / len(impostor)
    frr = np.searchsorted(genuine_sorted, thresholds, side="left") / len(genuine)
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2), float(thresholds[best])


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold whose FAR is at most ``far`` (scores ≥ threshold are accepted)."""
    descending = np.sort(impostor)[::-1]
    allowed = int(np.floor(far * len(descending) + 1e-9))
    if allowed >= len(descending):
        return float(descending[-1])
    return float(np.nextafter(descending[allowed], np.inf))


def verification_report(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = DEFAULT_FARS
) -> VerificationReport:
    """ROC AUC, EER and TAR with its threshold at each FAR target.

    Raises:
        ValueError: no genuine or no impostor pairs.
    """
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError(f"need genuine and impostor pairs, got {len(genuine)} and {len(impostor)}")
    eer, eer_threshold = equal_error_rate(genuine, impostor)
    tar: Dict[str, Optional[float]] = {}
    thresholds: Dict[str, Optional[float]] = {}
    notes: List[str] = []
    for far in fars:
        key = far_key(far)
        needed = int(np.ceil(1.0 / far - 1e-9))
        if len(impostor) < needed:
            tar[key] = thresholds[key] = None
            notes.append(
                f"TAR at FAR {key} not measurable: needs at least {needed} impostor pairs, have {len(impostor)}"
            )
            continue
        threshold = threshold_at_far(impostor, far)
        thresholds[key] = threshold
        tar[key] = float(np.mean(genuine >= threshold))
    return VerificationReport(
        auc=roc_auc(genuine, impostor),
        eer=eer,
        eer_threshold=eer_threshold,
        tar_at_far=tar,
        thresholds=thresholds,
        genuine=len(genuine),
        impostor=len(impostor),
        notes=notes,
    )


def plot_report(genuine: np.ndarray, impostor: np.ndarray, report: VerificationReport, path: str) -> None:
    """ROC (TAR against FAR, log scale), DET (FRR against FAR) and score histograms in one PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'face-appliance[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.unique(np.concatenate([genuine, impostor]))
    far = 1.0 - np.searchsorted(np.sort(impostor), thresholds, side="left") / len(impostor)
    tar = 1.0 - np.searchsorted(np.sort(genuine), thresholds, side="left") / len(genuine)
    floor = 0.5 / len(impostor)
    figure, (roc, det, hist) = plt.subplots(1, 3, figsize=(15, 4.5))
    roc.semilogx(np.maximum(far, floor), tar)
    roc.set(xlabel="false accept rate", ylabel="true accept rate", title=f"ROC (AUC {report.auc:.4f})")
    for key, value in report.tar_at_far.items():
        if value is not None:
            roc.plot(float(key), value, "o", label=f"TAR {value:.3f} @ FAR {key}")
    roc.legend(loc="lower right")
    roc.grid(True, which="both", alpha=0.3)
    det.loglog(np.maximum(far, floor), np.maximum(1.0 - tar, 0.5 / len(genuine)))
    det.set(xlabel="false accept rate", ylabel="false reject rate", title=f"DET (EER {report.eer:.4f})")
    det.grid(True, which="both", alpha=0.3)
    bins = np.linspace(-1, 1, 81)
    hist.hist(impostor, bins=bins, alpha=0.6, density=True, label=f"impostor ({len(impostor)})")
    hist.hist(genuine, bins=bins, alpha=0.6, density=True, label=f"genuine ({len(genuine)})")
    hist.axvline(
        report.eer_threshold, color="k", linestyle="--", label=f"EER threshold {report.eer_threshold:.3f}"
    )
    hist.set(xlabel="cosine similarity", ylabel="density", title="score distributions")
    hist.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- the door's protocol --------------------------------------------------------------------------------


@dataclass
class DoorReport:
    """``evaluate --enroll-per-identity N``: enrol N photos per person, identify every other photo.

    A probe is *granted* when its best identity (an identity's score is its best template's) scores at
    least the threshold, as ``identify`` decides one photo. People with N photos or fewer are not
    enrolled: all their photos are strangers' probes.
    """

    per_identity: int
    threshold: float
    enrolled_identities: int
    templates: int
    genuine: int  # probes of enrolled people
    granted: int  # granted as themselves
    granted_wrong: int  # granted as someone else
    rank1: int  # their own identity scored best, whatever the threshold
    strangers: int  # probes of people not enrolled
    strangers_granted: int
    genuine_scores: List[float] = field(default_factory=list)  # each genuine probe's own identity's score
    stranger_scores: List[float] = field(default_factory=list)  # each stranger probe's best score
    choice: str = "first"  # which photos were enrolled: "first" (file order) or "quality" (best first)

    def to_json(self) -> Dict[str, Any]:
        def rate(count: int, total: int) -> Optional[float]:
            return round(count / total, 4) if total else None

        def spread(values: List[float]) -> Optional[Dict[str, float]]:
            if not values:
                return None
            array = np.asarray(values)
            return {
                k: round(float(v), 4)
                for k, v in (("min", array.min()), ("median", np.median(array)), ("max", array.max()))
            }

        return {
            "per_identity": self.per_identity,
            "choice": self.choice,
            "threshold": self.threshold,
            "enrolled_identities": self.enrolled_identities,
            "templates": self.templates,
            "genuine_probes": self.genuine,
            "granted": self.granted,
            "granted_rate": rate(self.granted, self.genuine),
            "granted_as_someone_else": self.granted_wrong,
            "rank1": rate(self.rank1, self.genuine),
            "stranger_probes": self.strangers,
            "strangers_granted": self.strangers_granted,
            "genuine_score": spread(self.genuine_scores),
            "stranger_best_score": spread(self.stranger_scores),
        }


def door_protocol(
    embeddings: np.ndarray,
    labels: Sequence[str],
    per_identity: int,
    threshold: float,
    qualities: Optional[Sequence[float]] = None,
) -> DoorReport:
    """The door's case: ``per_identity`` photos of each person enrolled, the rest identified.

    Args:
        embeddings: ``(N, D)`` float32 unit vectors, in the labelled file's order (which decides
            which photos are enrolled without ``qualities``).
        labels: ``N`` identity labels.
        per_identity: photos enrolled per person (≥ 1); people with no more photos than that are
            strangers.
        threshold: the match threshold (``match.threshold``).
        qualities: ``N`` face quality scores (:func:`appliance.vision.quality.assess`): enrol each
            person's ``per_identity`` best photos by quality (ties in file order), as enrolment
            ranks them; ``None``: the first ones in file order.

    Raises:
        ValueError: ``per_identity`` below 1, or a length mismatch.
    """
    if per_identity < 1:
        raise ValueError(f"photos enrolled per identity must be at least 1, got {per_identity}")
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings for {len(labels)} labels")
    if qualities is not None and len(qualities) != len(labels):
        raise ValueError(f"{len(qualities)} qualities for {len(labels)} labels")
    positions: Dict[str, List[int]] = {}
    for index, label in enumerate(labels):
        positions.setdefault(label, []).append(index)
    if qualities is not None:
        ranked = {
            label: sorted(rows, key=lambda row: -float(qualities[row])) for label, rows in positions.items()
        }
    else:
        ranked = positions
    enrolled = {label: rows[:per_identity] for label, rows in ranked.items() if len(rows) > per_identity}
    owners = [label for label, rows in enrolled.items() for _ in rows]
    template_rows = [row for rows in enrolled.values() for row in rows]
    report = DoorReport(per_identity, float(threshold), len(enrolled), len(template_rows), 0, 0, 0, 0, 0, 0)
    report.choice = "first" if qualities is None else "quality"
    if not template_rows:
        report.strangers = len(labels)
        return report
    vectors = embeddings.astype(np.float64)
    scores = vectors @ vectors[template_rows].T  # (N, templates)
    names = sorted(enrolled)
    column_of = {name: i for i, name in enumerate(names)}
    # An identity's score is its best template's.
    by_identity = np.full((len(labels), len(names)), -np.inf)
    for template, owner in enumerate(owners):
        column = column_of[owner]
        by_identity[:, column] = np.maximum(by_identity[:, column], scores[:, template])
    enrolled_rows = {row for rows in enrolled.values() for row in rows}
    for index, label in enumerate(labels):
        if index in enrolled_rows:
            continue
        best = int(by_identity[index].argmax())
        best_score = float(by_identity[index, best])
        granted = best_score >= threshold
        if label in enrolled:
            own = float(by_identity[index, column_of[label]])
            report.genuine += 1
            report.genuine_scores.append(own)
            report.rank1 += int(names[best] == label)
            report.granted += int(granted and names[best] == label)
            report.granted_wrong += int(granted and names[best] != label)
        else:
            report.strangers += 1
            report.stranger_scores.append(best_score)
            report.strangers_granted += int(granted)
    return report
