"""A track's views: the embedded frames of one face that its outcome carries.

The best-quality frame is what a template update learns from (:mod:`appliance.template_update`) and
what the sightings store keeps. Walk-up enrolment (:mod:`appliance.sightings.walk_up`) gains from more
than one frame: a visitor walking up turns and nears the camera, and templates of a few differing
views match them later from more angles than one template does. Consecutive frames are nearly the
same picture, so a frame adds a view only when its embedding differs from every view kept (cosine
below :data:`SAME_VIEW`); and a tracker can pass a track from one person to another in a crowd, so
a view must still match the best one at the decision threshold, or it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: Cosine at or above which two frames of a track show the same view: only the better is kept.
#: Consecutive frames of the audience clip of ``shared/data`` (30 frames/s) score 0.95 at the median
#: with MobileFaceNet, 0.87–0.98 between the quartiles; the first twelve embedded frames of a track
#: score 0.5–0.97 against its best one.
SAME_VIEW = 0.9


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One *embedded* frame of a track. Never logged.

    Attributes:
        quality: the frame's face quality in ``[0, 1]``.
        embedding: ``(D,)`` float32 unit vector of ``model_version``.
        crop: ``(112, 112, 3)`` uint8 aligned crop.
        liveness: ``(score, passed)`` of that frame, ``None`` when not checked.
        model_version: the gallery's embedder version when it was embedded (a model switch between
            the frame and the decision makes it unusable).
    """

    quality: float
    embedding: np.ndarray
    crop: np.ndarray
    liveness: Optional[Tuple[float, bool]]
    model_version: str


def keep_view(
    views: Sequence[FaceSample], frame: FaceSample, most: int, same_person: float
) -> List[FaceSample]:
    """The views of a track once ``frame`` is seen: the best-quality frame first, then up to
    ``most - 1`` others by quality, no two of them the same view, each matching the best at
    ``same_person``.

    A frame that shows a view already kept replaces it only when its quality is higher; a frame of
    another embedder than the views' (a model switch) starts the views again. With ``most`` 1 this is
    the best-quality frame alone.

    Args:
        views: the track's views so far, as this function returned them (best first).
        frame: the track's newly embedded frame.
        most: views kept at most (at least 1).
        same_person: cosine to the best view that a view needs (the decision threshold).
    """
    if most < 1:
        raise ValueError(f"most must be at least 1, not {most}")
    if not views or views[0].model_version != frame.model_version:
        return [frame]
    scores = [float(view.embedding @ frame.embedding) for view in views]
    if any(score >= SAME_VIEW and view.quality >= frame.quality for view, score in zip(views, scores)):
        return list(views)  # a view kept already, seen no better
    # The views it shows again (no better than it) make way; it goes in by its quality.
    kept = [view for view, score in zip(views, scores) if score < SAME_VIEW]
    place = next((i for i, view in enumerate(kept) if frame.quality > view.quality), len(kept))
    kept.insert(place, frame)
    best = kept[0]
    others = [view for view in kept[1:] if float(view.embedding @ best.embedding) >= same_person]
    return [best, *others][:most]


__all__ = ["SAME_VIEW", "FaceSample", "keep_view"]
