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
