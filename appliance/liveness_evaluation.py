"""Liveness (presentation-attack detection) measured as ISO/IEC 30107-3 reports it: ``evaluate --liveness``.

A *presentation* is one labelled image: ``bona_fide`` (a live person in front of the camera) or an
attack made with one *PAI species* (presentation attack instrument: :data:`ATTACK_TYPES`). Each
image's largest face is scored by the fused MiniFASNet live score (:mod:`appliance.vision.liveness`,
``[0, 1]``); the PAD subsystem classifies a presentation as bona fide when its score is **at least**
the threshold (as :class:`~appliance.vision.liveness.LivenessChecker` decides), else as an attack.

Figures (ISO/IEC 30107-3:2017, clause 13):

- **APCER** per PAI species: the share of that species' attack presentations classified bona fide;
  **APCER max**: the highest APCER over the species (the standard's figure for a set of species).
- **BPCER**: the share of bona fide presentations classified as attacks.
- **BPCER20 / BPCER10**: the BPCER at the lowest threshold at which *every* species' APCER is at most
  5 % / 10 % (``bpcer_at_apcer`` keys ``"0.05"``, ``"0.1"``), with that threshold. With ``n``
  presentations of a species its APCER moves in steps of ``1/n``: when ``1/n`` is coarser than the
  target, the figure is the one at the APCER that can be reached (0 %), and a note says so.
- **Non-responses** (no face found): reported as the standard's *non-response rates*, BPNRR and APNRR
  per species, with the paths, and **not** counted in APCER or BPCER, which are classification error
  rates of the presentations the PAD subsystem answered. At the door an attack in which no face is
  found opens nothing (it is not an attack success); a live person in whom no face is found is not let
  in either, which the BPNRR shows next to the BPCER.
- Every rate carries its counts and a one-sided 95 % upper confidence bound (Clopper–Pearson): with 1
  attack presentation, APCER 0 % only says the true rate is below 95 %.

No averaged figure (ACER, HTER) is given: ISO/IEC 30107-3 keeps attack and bona fide errors apart.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from engines.errors import FileReadError
from engines.files import read_bounded_text

from .errors import ApplianceError

if TYPE_CHECKING:
    from .vision.analyzer import FaceAnalyzer

logger = logging.getLogger(__name__)

#: The label of a live person's presentation.
BONA_FIDE = "bona_fide"

#: PAI species a labels file may name (ISO/IEC 30107-3 Annex A's artefact kinds for faces).
ATTACK_TYPES: Dict[str, str] = {
    "print": "a photo printed on paper, held up or worn",
    "replay": "a photo or video shown on a screen (phone, tablet, monitor)",
    "mask": "a 3D mask (paper, latex, silicone, resin)",
    "cutout": "a printed photo with the eyes or mouth cut out",
    "other": "any other artefact",
}

#: The labels file's columns, exactly.
COLUMNS: Tuple[str, str] = ("path", "label")

#: Largest labels file read, and most presentations in it.
MAX_LABELS_BYTES = 16 * 1024 * 1024
MAX_PRESENTATIONS = 100_000

#: APCER targets at which the BPCER and threshold are reported (BPCER20, BPCER10).
DEFAULT_APCER_TARGETS: Tuple[float, ...] = (0.05, 0.10)

#: One-sided confidence level of every rate's upper bound.
CONFIDENCE = 0.95

#: Problems listed in one labels error before the rest are counted.
MAX_LISTED_PROBLEMS = 20


class LivenessEvaluationError(ApplianceError):
    """The presentations cannot give the figures (a class without a scored presentation)."""


class LivenessLabelsError(LivenessEvaluationError):
    """A liveness labels file that cannot be used; the message names every bad row."""


def rate_key(target: float) -> str:
    """An APCER target as the report's dictionary key: ``0.05`` → ``"0.05"``."""
    return f"{target:.10f}".rstrip("0").rstrip(".")


# -- the labels file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Presentation:
    """One labelled image.

    Attributes:
        path: as written in the labels file (relative to the folder, ``/``-separated).
        label: :data:`BONA_FIDE` or a key of :data:`ATTACK_TYPES`.
        line: its line in the labels file (the header is line 1).
        file: the image's resolved path inside the folder.
    """

    path: str
    label: str
    line: int
    file: Path


def _label_problem(label: str) -> Optional[str]:
    if label == BONA_FIDE or label in ATTACK_TYPES:
        return None
    allowed = [BONA_FIDE, *ATTACK_TYPES]
    close = difflib.get_close_matches(label.lower(), allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown label {label!r} (allowed: {', '.join(allowed)}){hint}"


def _path_problem(text: str, root: Path) -> Tuple[Optional[str], Optional[Path]]:
    """``(problem, None)`` or ``(None, resolved file)`` for one ``path`` cell."""
    if text != text.strip():
        return f"path {text!r} has leading or trailing spaces", None
    if any(ord(c) < 32 for c in text):
        return f"path {text!r} contains a control character", None
    if "\\" in text:
        return f"path {text!r} contains a backslash; separate folders with '/'", None
    relative = PurePosixPath(text)
    if relative.is_absolute() or ".." in relative.parts:
        return f"path {text!r} is not inside the folder (absolute or with '..')", None
    file = (root / relative).resolve()
    try:
        file.relative_to(root)
    except ValueError:
        return f"path {text!r} leads out of the folder (a link to {file})", None
    if not file.is_file():
        return f"path {text!r}: no such file in {root}", None
    return None, file


def read_presentations(labels: Path, root: Path) -> List[Presentation]:
    """The presentations a liveness labels file lists, every row checked.

    The file is UTF-8 CSV of at most :data:`MAX_LABELS_BYTES` with the header ``path,label`` (in
    either order) and at most :data:`MAX_PRESENTATIONS` rows. ``path`` is relative to ``root``, stays
    inside it (no absolute path, ``..`` or link out of it), names an existing file and appears once;
    ``label`` is :data:`BONA_FIDE` or a key of :data:`ATTACK_TYPES`, exactly.

    Raises:
        LivenessLabelsError: the file cannot be read or any row is bad; the message lists the
            problems with their line numbers (up to :data:`MAX_LISTED_PROBLEMS`).
    """
    if not root.is_dir():
        raise LivenessLabelsError(f"{root}: not a folder (the folder the labels' paths are relative to)")
    root = root.resolve()
    try:
        text = read_bounded_text(labels, MAX_LABELS_BYTES)
    except FileReadError as err:
        raise LivenessLabelsError(f"the labels file {err}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise LivenessLabelsError(
                f"{labels}: empty; expected the header 'path,label' and one row per image"
            )
        unknown = [name for name in header if name not in COLUMNS]
        missing = [name for name in COLUMNS if name not in header]
        if unknown or missing or len(header) != len(COLUMNS):
            found = ",".join(header)
            raise LivenessLabelsError(
                f"{labels}: line 1: the header must be exactly 'path,label' (found {found!r}"
                + (f"; unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "")
                + (f"; missing {', '.join(missing)}" if missing else "")
                + ")"
            )
        path_at, label_at = header.index("path"), header.index("label")
        problems: List[str] = []
        presentations: List[Presentation] = []
        first_line: Dict[Path, int] = {}
        rows = 0
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells:
                continue  # a blank line
            rows += 1
            if rows > MAX_PRESENTATIONS:
                raise LivenessLabelsError(
                    f"{labels}: more than {MAX_PRESENTATIONS} rows; split the evaluation into several files"
                )
            if len(cells) != len(COLUMNS):
                problems.append(f"line {line}: {len(cells)} value(s), expected 2 (path,label)")
                continue
            path, label = cells[path_at], cells[label_at]
            if not path or not label:
                problems.append(f"line {line}: empty {'path' if not path else 'label'}")
                continue
            problem = _label_problem(label)
            if problem is None:
                problem, file = _path_problem(path, root)
            if problem is not None:
                problems.append(f"line {line}: {problem}")
                continue
            assert file is not None
            if file in first_line:
                problems.append(f"line {line}: {path!r} is listed again (first on line {first_line[file]})")
                continue
            first_line[file] = line
            presentations.append(Presentation(path, label, line, file))
    except csv.Error as err:
        raise LivenessLabelsError(f"{labels}: line {reader.line_num}: not valid CSV ({err})") from None
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise LivenessLabelsError(
            f"{labels}: {len(problems)} bad row(s)\n"
            + "\n".join(f"  {problem}" for problem in listed)
            + (f"\n  … and {more} more" if more else "")
        )
    if not presentations:
        raise LivenessLabelsError(f"{labels}: no rows; list one image per line as path,label")
    return presentations


# -- scoring -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresentationResult:
    """What the PAD subsystem answered for one presentation.

    Attributes:
        path: as in the labels file.
        label: its label.
        faces: faces found in the image.
        score: the largest face's fused live score in ``[0, 1]``, or ``None`` when no face was found
            (a non-response).
    """

    path: str
    label: str
    faces: int
    score: Optional[float]


def score_presentation(
    analyzer: FaceAnalyzer, presentation: Presentation, image: np.ndarray
) -> PresentationResult:
    """The live score of the largest face in ``image`` ``(H, W, 3)`` uint8 BGR.

    Detection is the appliance's, as ``evaluate`` and enrolment run it on photos (scaled to
    ``detector.max_side``; an image without a face tried again inside a black border); the liveness
    check sees the image itself, as the pipeline's check sees a camera frame.

    Raises:
        LivenessEvaluationError: the analyzer has no liveness models loaded.
    """
    if analyzer.liveness is None:
        raise LivenessEvaluationError("the analyzer was loaded without the liveness models")
    faces = analyzer.detect(image, still=True)
    largest = faces.largest()
    if largest is None:
        return PresentationResult(presentation.path, presentation.label, 0, None)
    result = analyzer.liveness.check(image, faces.boxes[[largest]])
    return PresentationResult(presentation.path, presentation.label, len(faces), float(result.scores[0]))


# -- the figures ---------------------------------------------------------------------------------------


def upper_bound(errors: int, total: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper bound of a rate seen as ``errors`` of ``total``.

    The ``p`` at which ``P(X ≤ errors)`` for ``X ~ Binomial(total, p)`` is ``1 - confidence``; for 0
    errors that is ``1 - (1 - confidence) ** (1 / total)`` (about ``3 / total``, the rule of three).
    """
    if total <= 0:
        raise ValueError("a rate needs at least one presentation")
    if errors >= total:
        return 1.0
    alpha = 1.0 - confidence
    if errors == 0:
        return 1.0 - alpha ** (1.0 / total)
    log_comb = [
        math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1) for k in range(errors + 1)
    ]

    def cdf(p: float) -> float:
        log_p, log_q = math.log(p), math.log1p(-p)
        return sum(math.exp(c + k * log_p + (total - k) * log_q) for k, c in enumerate(log_comb))

    low, high = errors / total, 1.0
    for _ in range(60):  # bisection to well below the figures' printed precision
        middle = (low + high) / 2
        if cdf(middle) > alpha:
            low = middle
        else:
            high = middle
    return high


@dataclass(frozen=True)
class ErrorRate:
    """``errors`` of ``presentations`` (``presentations`` ≥ 1)."""

    errors: int
    presentations: int

    @property
    def rate(self) -> float:
        return self.errors / self.presentations

    def to_json(self) -> Dict[str, Any]:
        return {
            "rate": self.rate,
            "errors": self.errors,
            "presentations": self.presentations,
            "upper_95": upper_bound(self.errors, self.presentations),
        }

    def text(self) -> str:
        """``"2.0 % (2 of 101; ≤ 6.9 % at 95 %)"``."""
        bound = upper_bound(self.errors, self.presentations)
        return (
            f"{100 * self.rate:.1f} % ({self.errors} of {self.presentations}; "
            f"≤ {100 * bound:.1f} % at 95 % confidence)"
        )


@dataclass(frozen=True)
class OperatingPoint:
    """APCER per species and BPCER at one threshold (scores ≥ ``threshold`` are bona fide)."""

    threshold: float
    apcer: Dict[str, ErrorRate]
    bpcer: ErrorRate

    @property
    def apcer_max(self) -> float:
        return max(rate.rate for rate in self.apcer.values())

    @property
    def apcer_max_species(self) -> List[str]:
        """The species at :attr:`apcer_max`, sorted."""
        top = self.apcer_max
        return sorted(name for name, rate in self.apcer.items() if rate.rate == top)

    def to_json(self) -> Dict[str, Any]:
        return {
            "threshold": self.threshold,
            "apcer": {name: rate.to_json() for name, rate in sorted(self.apcer.items())},
            "apcer_max": self.apcer_max,
            "apcer_max_species": self.apcer_max_species,
            "bpcer": self.bpcer.to_json(),
        }


def operating_point(
    bona_fide: np.ndarray, attacks: Mapping[str, np.ndarray], threshold: float
) -> OperatingPoint:
    """APCER per species (attacks scoring ≥ ``threshold``) and BPCER (bona fide scoring below it).

    Args:
        bona_fide: ``(B,)`` live scores of bona fide presentations, ``B`` ≥ 1.
        attacks: per species, ``(A_s,)`` live scores, each ``A_s`` ≥ 1.
    """
    return OperatingPoint(
        float(threshold),
        {name: ErrorRate(int(np.count_nonzero(s >= threshold)), len(s)) for name, s in attacks.items()},
        ErrorRate(int(np.count_nonzero(bona_fide < threshold)), len(bona_fide)),
    )


def threshold_at_apcer(attacks: Mapping[str, np.ndarray], target: float) -> float:
    """The lowest threshold at which every species' APCER is at most ``target``.

    For a species of ``n`` scores at most ``floor(target · n)`` may reach the threshold: it lies just
    above the next-highest score. Attacks with equal scores pass or fail together, so with ties the
    APCER reached may be below the target.

    Args:
        attacks: per species, ``(A_s,)`` live scores, each ``A_s`` ≥ 1.
        target: in ``(0, 1)``.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"an APCER target lies between 0 and 1, got {target}")
    needed = -np.inf
    for scores in attacks.values():
        descending = np.sort(np.asarray(scores, np.float64))[::-1]
        allowed = int(np.floor(target * len(descending) + 1e-9))  # < len: target < 1
        needed = max(needed, float(np.nextafter(descending[allowed], np.inf)))
    return float(needed)


@dataclass
class PadReport:
    """The figures ``evaluate --liveness`` prints and writes (see :meth:`to_json`)."""

    configured: OperatingPoint
    at_apcer: Dict[str, OperatingPoint]
    presentations: Dict[str, Dict[str, int]]
    non_response: Dict[str, ErrorRate]
    results: List[PresentationResult]
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The report's stable keys (documented in the README's *Liveness* section)."""
        return {
            "standard": "ISO/IEC 30107-3",
            "decision": "bona fide when the live score >= threshold",
            "presentations": self.presentations,
            "configured_threshold": self.configured.to_json(),
            "bpcer_at_apcer": {key: point.to_json() for key, point in self.at_apcer.items()},
            "non_response": {
                "bpnrr": self.non_response[BONA_FIDE].to_json() if BONA_FIDE in self.non_response else None,
                "apnrr": {
                    name: rate.to_json()
                    for name, rate in sorted(self.non_response.items())
                    if name != BONA_FIDE
                },
            },
            "no_face": [{"path": r.path, "label": r.label} for r in self.results if r.score is None],
            "scores": [
                {"path": r.path, "label": r.label, "faces": r.faces, "score": r.score} for r in self.results
            ],
            "notes": self.notes,
        }


def pad_report(
    results: Sequence[PresentationResult],
    threshold: float,
    targets: Sequence[float] = DEFAULT_APCER_TARGETS,
) -> PadReport:
    """APCER per species, BPCER and non-response rates at ``threshold``; BPCER and threshold at each
    APCER target.

    Raises:
        LivenessEvaluationError: no bona fide presentation, or no attack presentation, with a score.
    """
    labelled: Dict[str, List[PresentationResult]] = {}
    for result in results:
        labelled.setdefault(result.label, []).append(result)
    scored = {
        label: np.array([r.score for r in items if r.score is not None], np.float64)
        for label, items in labelled.items()
    }
    bona_fide = scored.get(BONA_FIDE, np.zeros(0))
    if not len(bona_fide):
        found = len(labelled.get(BONA_FIDE, []))
        raise LivenessEvaluationError(
            "no bona fide presentation to measure the BPCER on: "
            + (
                f"no face was found in any of the {found} labelled bona fide"
                if found
                else "no row is labelled bona_fide"
            )
        )
    attack_labels = sorted(label for label in labelled if label != BONA_FIDE)
    attacks = {label: scored[label] for label in attack_labels if len(scored[label])}
    if not attacks:
        found = sum(len(labelled[label]) for label in attack_labels)
        raise LivenessEvaluationError(
            "no attack presentation to measure the APCER on: "
            + (
                f"no face was found in any of the {found} labelled attack(s)"
                if found
                else f"no row is labelled with an attack type ({', '.join(ATTACK_TYPES)})"
            )
        )
    notes: List[str] = []
    for label in attack_labels:
        if label not in attacks:
            notes.append(
                f"{label}: no face found in any of its {len(labelled[label])} presentation(s); "
                "its APCER is not measured (an attack without a face opens nothing: see its APNRR)"
            )
    at_apcer: Dict[str, OperatingPoint] = {}
    for target in targets:
        point = operating_point(bona_fide, attacks, threshold_at_apcer(attacks, target))
        at_apcer[rate_key(target)] = point
        coarse = sorted(name for name, s in attacks.items() if 1.0 / len(s) > target)
        if coarse:
            steps = "; ".join(
                f"{n}: {len(attacks[n])} presentation(s), steps of {100 / len(attacks[n]):.3g} %"
                for n in coarse
            )
            notes.append(
                f"APCER {100 * target:g} % is finer than the APCER can move ({steps}): "
                f"{bpcer_name(target)} is the BPCER at which none of those attacks passes"
            )
        if point.threshold >= 1.0:
            notes.append(
                f"APCER {100 * target:g} % needs a threshold of {point.threshold:.6f}, beyond what "
                "liveness.threshold accepts (below 1): an attack scored the highest live score"
            )
    presentations = {
        label: {
            "labelled": len(items),
            "scored": len(scored[label]),
            "no_face": len(items) - len(scored[label]),
        }
        for label, items in sorted(labelled.items())
    }
    non_response = {
        label: ErrorRate(counts["no_face"], counts["labelled"]) for label, counts in presentations.items()
    }
    return PadReport(
        operating_point(bona_fide, attacks, threshold),
        at_apcer,
        presentations,
        non_response,
        list(results),
        notes,
    )


def operating_curve(
    bona_fide: np.ndarray, attacks: Mapping[str, np.ndarray]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, apcer_max, bpcer)`` at every score seen and just above the highest (the DET).

    Returns:
        three ``(T,)`` float64 arrays, thresholds ascending.
    """
    every = np.concatenate([bona_fide, *attacks.values()])
    thresholds = np.unique(np.append(every, np.nextafter(every.max(), np.inf)))
    bona_sorted = np.sort(bona_fide)
    bpcer = np.searchsorted(bona_sorted, thresholds, side="left") / len(bona_fide)
    apcer = np.zeros(len(thresholds))
    for scores in attacks.values():
        passed = 1.0 - np.searchsorted(np.sort(scores), thresholds, side="left") / len(scores)
        apcer = np.maximum(apcer, passed)
    return thresholds, apcer, bpcer


# -- output --------------------------------------------------------------------------------------------


def bpcer_name(target: float) -> str:
    """The standard's name of the BPCER at an APCER target: ``0.05`` → ``"BPCER20"``."""
    return f"BPCER{round(1 / target)}"


def report_lines(report: PadReport) -> List[str]:
    """The report as ``evaluate --liveness`` prints it."""
    lines = [
        "liveness per ISO/IEC 30107-3 (the largest face's live score; bona fide when score >= threshold)"
    ]
    counts = ", ".join(
        f"{label} {c['labelled']}" + (f" ({c['no_face']} without a face)" if c["no_face"] else "")
        for label, c in report.presentations.items()
    )
    lines.append(f"presentations: {counts}")
    point = report.configured
    width = max(len(name) for name in point.apcer)
    lines.append(f"at the configured threshold {point.threshold:g}:")
    for name, rate in sorted(point.apcer.items()):
        lines.append(f"  APCER {name:<{width}}  {rate.text()}")
    lines.append(f"  APCER max {100 * point.apcer_max:.1f} % ({', '.join(point.apcer_max_species)})")
    lines.append(f"  BPCER {'':<{width}}  {point.bpcer.text()}")
    for key, at in report.at_apcer.items():
        target = float(key)
        lines.append(
            f"{bpcer_name(target)} (APCER <= {100 * target:g} %): BPCER {at.bpcer.text()} at threshold "
            f"{at.threshold:.6f} (APCER max reached {100 * at.apcer_max:.1f} %)"
        )
    for label, rate in report.non_response.items():
        if rate.errors:
            kind = "BPNRR" if label == BONA_FIDE else f"APNRR {label}"
            lines.append(f"no face found, {kind}: {rate.text()}")
    for result in report.results:
        if result.score is None:
            lines.append(f"no face: {result.path} ({result.label})")
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def plot_pad_report(report: PadReport, path: Union[str, os.PathLike]) -> None:
    """Each presentation's live score by class with the operating points, and the DET (APCER max
    against BPCER over every threshold), in one PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'face-appliance[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: Dict[str, List[float]] = {}
    for result in report.results:
        if result.score is not None:
            by_label.setdefault(result.label, []).append(result.score)
    labels = sorted(by_label, key=lambda name: (name != BONA_FIDE, name))
    bona_fide = np.asarray(by_label[BONA_FIDE])
    attacks = {name: np.asarray(by_label[name]) for name in labels if name != BONA_FIDE}
    points: List[Tuple[str, OperatingPoint, str]] = [
        (f"configured {report.configured.threshold:g}", report.configured, "k")
    ]
    for (key, at), colour in zip(report.at_apcer.items(), ("tab:red", "tab:purple", "tab:brown")):
        points.append((f"{bpcer_name(float(key))} threshold {at.threshold:.3f}", at, colour))

    figure, (strip, det) = plt.subplots(1, 2, figsize=(13, 4.5))
    rng = np.random.default_rng(0)  # jitter only spreads the dots; it carries no figure
    for row, name in enumerate(labels):
        values = np.asarray(by_label[name])
        strip.scatter(values, row + rng.uniform(-0.18, 0.18, len(values)), s=18, alpha=0.7)
    strip.set_yticks(range(len(labels)))
    strip.set_yticklabels([f"{name} ({len(by_label[name])})" for name in labels])
    for text, point, colour in points:
        strip.axvline(point.threshold, color=colour, linestyle="--", linewidth=1, label=text)
    strip.set(
        xlim=(-0.02, 1.02),
        xlabel="live score (bona fide when ≥ threshold)",
        title="live score per presentation",
    )
    strip.legend(loc="upper center", fontsize=8)
    strip.grid(True, axis="x", alpha=0.3)

    _, apcer, bpcer = operating_curve(bona_fide, attacks)
    det.step(apcer, bpcer, where="post")
    for text, point, colour in points:
        det.plot(
            point.apcer_max,
            point.bpcer.rate,
            "o",
            color=colour,
            label=f"{text}: BPCER {point.bpcer.rate:.3f}",
        )
    det.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel=f"APCER, max over species ({', '.join(f'{n} {len(s)}' for n, s in attacks.items())} attacks)",
        ylabel=f"BPCER ({len(bona_fide)} bona fide)",
        title="DET (linear axes: few presentations)",
    )
    det.legend(loc="upper right", fontsize=8)
    det.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=100)
    plt.close(figure)


def evaluate_presentations(
    analyzer: FaceAnalyzer,
    presentations: Sequence[Presentation],
    images: Iterable[Union[np.ndarray, Exception]],
) -> Tuple[List[PresentationResult], List[Dict[str, str]]]:
    """Score each presentation's image (``images`` in the same order: the decoded image or the error
    reading it raised).

    Returns:
        the results of the images that could be read, and ``{"path", "label", "reason"}`` for each
        that could not (not a presentation: it reached no PAD subsystem).
    """
    results: List[PresentationResult] = []
    unreadable: List[Dict[str, str]] = []
    for presentation, image in zip(presentations, images):
        if isinstance(image, Exception):
            unreadable.append({"path": presentation.path, "label": presentation.label, "reason": str(image)})
            continue
        results.append(score_presentation(analyzer, presentation, image))
    return results, unreadable
