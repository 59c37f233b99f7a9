"""Enrolment: turning photos of a person into gallery templates, refusing photos that would hurt.

Each photo is checked before anything is stored: exactly one face (or the one asked for), large
enough, sharp enough, not turned too far. The accepted photos are ranked by their quality score
(:func:`appliance.vision.quality.assess`: size, sharpness, pose) and the best are kept, up to
``gallery.max_enrolled_templates`` enrolled templates per identity (those it holds count); every
photo's verdict says whether it was kept, its quality and rank, or why not. The kept photos of one
person are stored in one transaction. A face very similar to *another* identity is stored but reported as a possible
duplicate (the same person enrolled twice, or a look-alike the operator should know about).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .access.policy import IdentityPolicy
from .config import GalleryConfig
from .gallery.gallery import Gallery
from .gallery.store import ENROLLED
from .vision.analyzer import FaceAnalyzer
from .vision.quality import FaceQuality, assess

logger = logging.getLogger(__name__)


@dataclass
class PhotoVerdict:
    """What happened to one photo: ``accepted`` means stored. ``rank``: its place (1 = best) by
    quality among the photos that passed the checks, ``None`` for a refused one."""

    source: str
    accepted: bool
    reason: str
    quality: Optional[FaceQuality] = None
    rank: Optional[int] = None


@dataclass
class EnrollmentResult:
    """The outcome for one identity."""

    identity_id: str
    name: str
    photos: List[PhotoVerdict] = field(default_factory=list)
    template_ids: List[int] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)  # human-readable warnings

    @property
    def accepted(self) -> int:
        return sum(1 for photo in self.photos if photo.accepted)


@dataclass
class _Accepted:
    crop: np.ndarray  # (112, 112, 3) uint8
    embedding: np.ndarray  # (D,) float32
    quality: FaceQuality
    verdict: Optional[PhotoVerdict] = None


class Enroller:
    """Checks photos and stores the good ones.

    Args:
        analyzer: detection, alignment and embedding.
        gallery: where templates go.
        settings: the ``[gallery]`` section (quality limits, duplicate threshold).
    """

    def __init__(self, analyzer: FaceAnalyzer, gallery: Gallery, settings: GalleryConfig) -> None:
        self.analyzer = analyzer
        self.gallery = gallery
        self.settings = settings

    def check_photo(
        self, image: np.ndarray, source: str, face: Optional[int] = None, largest: bool = False
    ) -> tuple:
        """Detect, choose the face, check its quality and embed it.

        Args:
            image: ``(H, W, 3)`` uint8 BGR.
            face: 1-based index of the face to use when the photo shows several (in detection order,
                as ``detect`` prints them); ``largest`` picks the largest instead.

        Returns:
            ``(PhotoVerdict, _Accepted or None)``.
        """
        faces = self.analyzer.detect(image, still=True)
        if not len(faces):
            return PhotoVerdict(source, False, "no face found"), None
        if face is not None:
            if not 1 <= face <= len(faces):
                return PhotoVerdict(source, False, f"face {face} asked for, {len(faces)} found"), None
            chosen = face - 1
        elif largest:
            chosen = int(faces.largest() or 0)
        elif len(faces) > 1:
            return PhotoVerdict(
                source, False, f"{len(faces)} faces found; choose one with --face N or --largest"
            ), None
        else:
            chosen = 0
        analysis = self.analyzer.analyze(image, faces=faces.take([chosen]))
        embeddings = analysis.embeddings
        if analysis.crops is None or embeddings is None:
            return PhotoVerdict(source, False, "the face could not be embedded"), None
        (quality,) = assess(analysis.faces.boxes, analysis.faces.landmarks, analysis.crops)
        limits = self.settings
        problem = None
        if quality.size < limits.min_face_px:
            problem = f"face too small ({quality.size:.0f} px, at least {limits.min_face_px})"
        elif quality.sharpness < limits.min_sharpness:
            problem = f"too blurred (sharpness {quality.sharpness:.1f}, at least {limits.min_sharpness:g})"
        elif abs(quality.yaw) > limits.max_yaw_deg:
            problem = f"head turned too far ({quality.yaw:+.0f}°, at most ±{limits.max_yaw_deg:g}°)"
        elif abs(quality.pitch) > limits.max_pitch_deg:
            problem = f"head tilted too far ({quality.pitch:+.0f}°, at most ±{limits.max_pitch_deg:g}°)"
        if problem is not None:
            return PhotoVerdict(source, False, problem, quality), None
        accepted = _Accepted(analysis.crops[0], embeddings[0], quality)
        return PhotoVerdict(source, True, f"accepted (quality {quality.score:.2f})", quality), accepted

    def enroll(
        self,
        identity_id: str,
        name: str,
        photos: Sequence[tuple],
        external_id: Optional[str] = None,
        consent_at: Optional[str] = None,
        face: Optional[int] = None,
        largest: bool = False,
        policy: Optional[IdentityPolicy] = None,
        keep: Optional[int] = None,
    ) -> EnrollmentResult:
        """Check every photo and store the best accepted ones for one identity.

        Args:
            photos: ``(source label, image or an Exception from reading it)`` pairs.
            policy: a new identity's access policy (validity, groups); an existing one keeps its own.
            keep: enrolled templates the identity may hold after this enrolment (default
                ``gallery.max_enrolled_templates``); the accepted photos beyond the free places are
                the lowest in quality and are reported as not kept.

        Raises:
            IdentityError: the id is taken by another name, or is not allowed.
        """
        result = EnrollmentResult(identity_id, name)
        good: List[_Accepted] = []
        for source, image in photos:
            if isinstance(image, Exception):
                result.photos.append(PhotoVerdict(source, False, str(image)))
                continue
            verdict, accepted = self.check_photo(image, source, face, largest)
            result.photos.append(verdict)
            if accepted is not None:
                accepted.verdict = verdict
                good.append(accepted)
        good = self._best(identity_id, good, self.settings.max_enrolled_templates if keep is None else keep)
        if not good:
            return result
        embeddings = np.stack([item.embedding for item in good])
        for candidates in self.gallery.search(embeddings, identities=3):
            for candidate in candidates:
                if (
                    candidate.identity_id != identity_id
                    and candidate.score >= self.settings.duplicate_threshold
                ):
                    warning = (
                        f"very similar to identity {candidate.identity_id!r} ({candidate.name}): "
                        f"score {candidate.score:.2f} ≥ {self.settings.duplicate_threshold:g}; possible duplicate"
                    )
                    if warning not in result.duplicates:
                        result.duplicates.append(warning)
        result.template_ids = self.gallery.add(
            identity_id,
            name,
            embeddings,
            np.stack([item.crop for item in good]),
            [item.quality.score for item in good],
            external_id,
            consent_at,
            policy=policy,
        )
        logger.info("enrolled %d template(s) for one identity", len(result.template_ids))
        return result

    def _best(self, identity_id: str, good: List[_Accepted], keep: int) -> List[_Accepted]:
        """Rank the accepted photos by quality (best first, ties in the given order) and keep those
        that fit in ``keep`` minus the enrolled templates the identity holds; each verdict says which."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        held = self._enrolled_held(identity_id)
        free = max(0, keep - held)
        ranked = sorted(good, key=lambda item: -item.quality.score)
        for rank, item in enumerate(ranked, 1):
            verdict = item.verdict
            assert verdict is not None
            verdict.rank = rank
            score = item.quality.score
            if rank <= free:
                verdict.reason = f"accepted (quality {score:.2f}, rank {rank} of {len(ranked)})"
                continue
            verdict.accepted = False
            held_text = f", {held} held already" if held else ""
            verdict.reason = (
                f"not kept: quality {score:.2f}, rank {rank} of {len(ranked)}; at most {keep} enrolled "
                f"template(s) per identity{held_text} (gallery.max_enrolled_templates or --keep)"
            )
        return ranked[:free]

    def _enrolled_held(self, identity_id: str) -> int:
        """The enrolled templates of the active embedder the identity holds (0 for a new identity)."""
        store = self.gallery.store
        if store.identity(identity_id) is None:
            return 0
        return sum(
            1
            for info in store.template_infos(identity_id)
            if info.origin.kind == ENROLLED and info.model_version == self.gallery.model_version
        )


def crop_as_photo(crop: np.ndarray) -> np.ndarray:
    """An aligned ``(112, 112, 3)`` uint8 crop (a face seen at the door, kept by the sightings store) as a
    photo the enrolment path reads: doubled and framed (``(352, 352, 3)`` uint8), so the detector and the
    quality checks see a face with margins."""
    import cv2

    large = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(large, 64, 64, 64, 64, cv2.BORDER_CONSTANT, value=(96, 96, 96))
