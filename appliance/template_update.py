"""Template update from confident passes: a granted passage teaches its identity a new template.

One enrolment photo covers one day's light, hair and glasses; the door sees the person every day. With
``adaptive.enabled`` (off by default) a passage that was **granted** and is trusted — a clear margin
over the runner-up identity (``adaptive.min_margin``), liveness passed (``adaptive.require_liveness``,
which needs ``liveness.enabled``), the frame's quality at least ``adaptive.min_quality`` — adds the
embedding of the passage's best-quality embedded frame as an *adaptive* template of that identity.

Bounds, because an adaptive template is a poisoning risk (a look-alike granted now and then would
otherwise pull the identity towards itself, one template at a time):

* **drift**: the new template must be at least ``adaptive.min_enrolled_similarity`` similar to one of
  the identity's *enrolled* templates — never to an adaptive one, so the learnt templates stay inside a
  fixed ball around the enrolment photos and cannot walk away from them in a chain;
* **count**: at most ``adaptive.max_per_identity`` adaptive templates per identity; the oldest adaptive
  one goes first, an enrolled one never;
* **rate**: at most one per ``adaptive.min_interval_s`` per identity (a person standing in view is
  re-announced every ``decision.reannounce_s``; that must not fill every slot with near-copies).

Where it runs: the pipeline thread, told of each stored event (:class:`appliance.event_recorder.
EventRecorder` ``on_stored``), checks what it holds in memory — granted, margin, liveness, quality,
the model that embedded the frame — and hands a passage that qualifies to the ``gallery-change``
thread (:mod:`appliance.change_thread`), where the rest reads the store (the rate and drift rules)
and writes it (one transaction and an in-memory index change; the index file is written with the
next enrolment or removal, or at close). So the door never waits for a disk or an index edit to
learn. That matters most above ``gallery.approximate_above`` templates, where the index is an HNSW
graph and replacing an identity's oldest adaptive template detaches a node with a scan of the
graph's links (10 ms at 10⁵ templates, 74 ms at 10⁶ on the AMD host); the graph is rebuilt on a
thread of its own once detached nodes pass a tenth of it. Learning is never worth a queue: while the
``gallery-change`` thread is busy (a removal, a reading of the store, the last passage's template) or
another change holds the gallery (an enrolment's transaction, a fleet batch, an index file being
written), the passage teaches nothing (reason ``gallery busy``).

Every addition is recorded (the template's ``kind``, ``source_event`` = the access event's id, the
passage's score and margin, the model version, the time) and reversible: ``gallery templates ID``
lists them and ``--remove`` deletes one for real.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Counter, Dict, List, Optional

import numpy as np

from .change_thread import ChangeThread
from .config import AdaptiveConfig
from .decisions import GRANTED
from .gallery.errors import GalleryBusyError, GalleryError, IdentityError, StaleEmbeddingError
from .gallery.gallery import Gallery
from .gallery.store import ADAPTIVE, ENROLLED, TemplateInfo, TemplateOrigin
from .pipeline import Outcome

logger = logging.getLogger(__name__)

#: The refusal of a frame embedded by another model than the gallery's (screened, or caught at the write).
MODEL_SWITCHED = "model switched: the frame was embedded by another model"


@dataclass(frozen=True)
class UpdateVerdict:
    """What :meth:`TemplateUpdater.consider` did with one outcome.

    ``added``: the new template id, or ``None``; ``reason``: why not (or ``"added"``); ``evicted``:
    the adaptive template ids removed to make room; ``similarity``: the best cosine to an enrolled
    template, when it was computed.
    """

    added: Optional[int]
    reason: str
    evicted: List[int]
    similarity: Optional[float] = None


class TemplateUpdater:
    """Decides, per stored access event, whether its passage becomes an adaptive template.

    Args:
        gallery: the daemon's gallery.
        settings: the ``[adaptive]`` section (a reload replaces it, while the ``gallery-change``
            thread is idle).
        liveness_enabled: ``liveness.enabled``; with ``require_liveness`` and liveness off nothing is
            learnt (the configuration refuses that combination; this is the second guard).
        clock: seconds since the epoch (tests pass their own).
        changes: the ``gallery-change`` thread, where :meth:`on_stored` hands a passage that
            qualifies (see the module); ``None``: it is learnt on the calling thread.
    """

    def __init__(
        self,
        gallery: Gallery,
        settings: AdaptiveConfig,
        liveness_enabled: bool,
        clock: Callable[[], float] = time.time,
        changes: Optional[ChangeThread] = None,
    ) -> None:
        self.gallery = gallery
        self.settings = settings
        self.liveness_enabled = liveness_enabled
        self.changes = changes
        self._clock = clock
        #: Templates added, and outcomes refused per reason (the refusal's first words); counted by
        #: the pipeline thread and the ``gallery-change`` thread, under ``_counting``.
        self.added = 0
        self.refused: Counter[str] = Counter()
        self._counting = threading.Lock()

    def on_stored(self, outcome: Outcome, event_id: str) -> None:
        """The :class:`EventRecorder` hook (pipeline thread): screen the outcome, and learn from one
        that qualifies on the ``gallery-change`` thread (see the module). Never raises: recognition
        goes on whatever happens to learning."""
        refusal = self._screen(outcome)
        if refusal is not None:
            self._refuse(refusal, event_id)
        elif self.changes is None:
            self._learn(outcome, event_id)
        elif not self.changes.start(self._learn, outcome, event_id):
            self._refuse("gallery busy: the gallery-change thread was at work", event_id)

    def _learn(self, outcome: Outcome, event_id: str) -> None:
        """:meth:`consider` the outcome, logging a failure instead of raising it."""
        try:
            self.consider(outcome, event_id)
        except GalleryError as err:
            self._refuse("store error", event_id)
            logger.warning("template update from event %s failed: %s", event_id, err)

    def consider(self, outcome: Outcome, event_id: str) -> UpdateVerdict:
        """Add an adaptive template from ``outcome`` when every rule of the module holds, on this
        thread (it reads and writes the store).

        Raises:
            GalleryError: the store refused the write (a full disk).
        """
        verdict = self._judge(outcome, event_id)
        if verdict.added is None:
            self._refuse(verdict.reason, event_id)
        return verdict

    def _refuse(self, reason: str, event_id: str) -> None:
        """Count a refusal under its first words."""
        with self._counting:
            self.refused[reason.split(":", maxsplit=1)[0]] += 1
        logger.debug("event %s: no template update (%s)", event_id, reason)

    def _judge(self, outcome: Outcome, event_id: str) -> UpdateVerdict:
        try:
            return self._judge_passage(outcome, event_id)
        except IdentityError:
            # A removal (a command, a fleet tombstone, the command line's) may come between the
            # passage and the update: the person granted a moment ago may be gone. Nothing to learn.
            return UpdateVerdict(None, "removed: the identity was removed since the passage", [])

    def _screen(self, outcome: Outcome) -> Optional[str]:
        """The rules that need nothing but the outcome and the settings (no store, no index): why the
        passage teaches nothing, or ``None`` when the store's rules are to be checked."""
        settings = self.settings
        decision, sample = outcome.decision, outcome.sample
        if not settings.enabled:
            return "disabled"
        if decision.decision != GRANTED or decision.identity_id is None:
            return f"not granted: {decision.decision}"
        if decision.faceless:
            return "no face: a card and PIN"
        if sample is None:
            return "no embedded frame"
        if sample.model_version != self.gallery.model_version:
            return MODEL_SWITCHED
        if decision.margin is not None and decision.margin < settings.min_margin:
            return f"low margin: {decision.margin:.3f} < {settings.min_margin:g}"
        if settings.require_liveness:
            if not self.liveness_enabled:
                return "no liveness: liveness.enabled is false"
            if decision.liveness is None or not decision.liveness[1]:
                return "no liveness: the passage's liveness did not pass"
            if sample.liveness is None or not sample.liveness[1]:
                return "no liveness: the chosen frame's liveness did not pass"
        if sample.quality < settings.min_quality:
            return f"low quality: {sample.quality:.3f} < {settings.min_quality:g}"
        return None

    def _judge_passage(self, outcome: Outcome, event_id: str) -> UpdateVerdict:
        refusal = self._screen(outcome)
        if refusal is not None:
            return UpdateVerdict(None, refusal, [])
        settings = self.settings
        decision, sample = outcome.decision, outcome.sample
        assert decision.identity_id is not None and sample is not None  # screened
        identity_id = decision.identity_id
        infos = self.gallery.store.template_infos(identity_id)
        if self._too_soon(infos):
            return UpdateVerdict(
                None, f"too soon: the last adaptive template is under {settings.min_interval_s:g} s old", []
            )
        enrolled = self._enrolled_embeddings(identity_id)
        if not len(enrolled):
            return UpdateVerdict(None, "no enrolled template of the active model", [])
        vector = np.asarray(sample.embedding, np.float64).reshape(-1)
        similarity = float((enrolled.astype(np.float64) @ vector).max())
        if similarity < settings.min_enrolled_similarity:
            return UpdateVerdict(
                None,
                f"drift: similarity to the enrolled templates {similarity:.3f} < {settings.min_enrolled_similarity:g}",
                [],
                similarity,
            )
        origin = TemplateOrigin(ADAPTIVE, event_id, decision.score, decision.margin)
        try:
            added, evicted = self.gallery.add_adaptive(
                identity_id,
                sample.embedding,
                sample.crop,
                sample.quality,
                origin,
                settings.max_per_identity,
                save=False,
                wait=False,
                embedded_with=sample.model_version,
            )
        except StaleEmbeddingError:  # screened against the model before, switched since
            return UpdateVerdict(None, MODEL_SWITCHED, [], similarity)
        except GalleryBusyError:
            # Another change, or an index file being written (a fleet batch's save: seconds at 10⁶
            # templates): waiting would hold the commands queued behind this thread.
            return UpdateVerdict(
                None, "gallery busy: another change or an index write was in progress", [], similarity
            )
        with self._counting:
            self.added += 1
        logger.info(
            "template update: an adaptive template from event %s (score %.3f, margin %s, quality %.2f); %d evicted",
            event_id,
            decision.score or 0.0,
            "none" if decision.margin is None else f"{decision.margin:.3f}",
            sample.quality,
            len(evicted),
        )
        return UpdateVerdict(added, "added", evicted, similarity)

    def _too_soon(self, infos: List[TemplateInfo]) -> bool:
        if self.settings.min_interval_s <= 0:
            return False
        times = [_epoch(info.created_at) for info in infos if info.origin.kind == ADAPTIVE]
        latest = max((t for t in times if t is not None), default=None)
        return latest is not None and self._clock() - latest < self.settings.min_interval_s

    def _enrolled_embeddings(self, identity_id: str) -> np.ndarray:
        """``(E, D)`` float32: the identity's enrolled templates of the active model."""
        vectors = [
            template.embedding
            for template in self.gallery.store.templates(self.gallery.model_version, identity_id)
            if template.origin.kind == ENROLLED
        ]
        return np.stack(vectors) if vectors else np.zeros((0, self.gallery.dim), np.float32)

    def state(self) -> Dict[str, object]:
        """For ``…/state``: templates added and refusals by reason since the start."""
        with self._counting:
            return {"added": self.added, "refused": dict(self.refused)}


def _epoch(stamp: str) -> Optional[float]:
    """Seconds since the epoch of a stored RFC 3339 ``…Z`` timestamp, ``None`` when unreadable."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["TemplateUpdater", "UpdateVerdict"]
