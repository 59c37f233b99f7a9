"""Re-embedding the gallery for another embedder, from the encrypted enrolment crops.

Embeddings of two embedder versions are not comparable, so a new embedder needs every enrolled
template computed again. The aligned 112×112 crops kept (encrypted) with each template make that
possible without asking anyone to enrol again; a template stored without a crop cannot follow and
is counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .store import TemplateOrigin, TemplateStore

logger = logging.getLogger(__name__)

#: ``(N, 112, 112, 3)`` uint8 BGR crops → ``(N, D)`` float32 unit embeddings.
EmbedFunction = Callable[[np.ndarray], np.ndarray]
Row = Tuple[str, np.ndarray, Optional[np.ndarray], Optional[float], TemplateOrigin]

BATCH = 32


@dataclass
class Reembedding:
    """Templates of ``source_version`` computed again with another embedder.

    ``embeddings`` maps a source template id to its new ``(D,)`` float32 embedding.
    """

    source_version: str
    embeddings: Dict[int, np.ndarray] = field(default_factory=dict)
    without_crop: List[int] = field(default_factory=list)


def reembed(
    store: TemplateStore,
    source_version: str,
    embed: EmbedFunction,
    done: Optional[Reembedding] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Reembedding:
    """Embed the crops of every ``source_version`` template not already in ``done``.

    Called once in the background (everything) and once more between two frames (only templates
    enrolled meanwhile), so the switch itself stays short.

    Args:
        progress: ``(templates done, total)`` after each batch.
    """
    result = done if done is not None else Reembedding(source_version)
    pending = [
        template
        for template in store.templates(source_version)
        if template.id not in result.embeddings and template.id not in result.without_crop
    ]
    with_crops = [t for t in pending if t.crop is not None]
    result.without_crop.extend(t.id for t in pending if t.crop is None)
    for start in range(0, len(with_crops), BATCH):
        batch = with_crops[start : start + BATCH]
        vectors = np.asarray(embed(np.stack([t.crop for t in batch])), np.float32)  # type: ignore[misc]
        for template, vector in zip(batch, vectors):
            result.embeddings[template.id] = vector
        if progress is not None:
            progress(min(start + BATCH, len(with_crops)), len(with_crops))
    if result.without_crop:
        logger.warning(
            "%d template(s) of %s have no enrolment crop and cannot be re-embedded",
            len(result.without_crop),
            source_version,
        )
    return result


def rows_for(store: TemplateStore, reembedding: Reembedding) -> List[Row]:
    """The rows to write for the new version: every source template still present that was re-embedded."""
    rows: List[Row] = []
    for template in store.templates(reembedding.source_version):
        vector = reembedding.embeddings.get(template.id)
        if vector is not None:
            # The origin travels: an adaptive template stays adaptive (and evictable), with its event.
            origin = replace(template.origin, created_at=template.created_at)
            rows.append((template.identity_id, vector, template.crop, template.quality, origin))
    return rows


def reembed_impostors(store: TemplateStore, model_version: str, embed: EmbedFunction) -> int:
    """Embed the crops of the impostor examples ("this is not X") of other embedder versions for
    ``model_version`` and store them as examples of it (the old ones go with
    :meth:`TemplateStore.drop_versions` once the switch is final). They are few: one batch. Returns
    how many were written; an example without a crop cannot follow and is dropped then."""
    crops = store.impostor_crops(model_version)
    if not crops:
        return 0
    vectors = np.asarray(embed(np.stack([crop for _, _, crop in crops])), np.float32)
    return store.copy_impostors(
        model_version, {impostor_id: vector for (impostor_id, _, _), vector in zip(crops, vectors)}
    )


__all__ = ["EmbedFunction", "Reembedding", "reembed", "reembed_impostors", "rows_for"]
