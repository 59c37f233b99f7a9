"""Float16 templates on real MobileFaceNet embeddings (issue 16, part 4): the same identification as
float32 and every score within 2⁻¹¹ of float32's.

Every photo of ``shared/data/faces`` is embedded (its largest face); each embedding is searched, as a
query, in a gallery of all the others, exact in float32 and in float16 (the default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.gallery.index import FLOAT16_SCORE_BOUND, TemplateIndex
from appliance.vision.analyzer import FaceAnalyzer
from bench.gallery import labelled_face_embeddings


def test_float16_identifies_real_embeddings_as_float32_does(
    analyzer: FaceAnalyzer, shared_data: Path
) -> None:
    embeddings, labels = labelled_face_embeddings(analyzer, shared_data)
    assert len(labels) >= 90
    for leave_out in range(len(labels)):
        keep = np.arange(len(labels)) != leave_out
        ids = np.flatnonzero(keep)
        query = embeddings[leave_out : leave_out + 1]
        found = {}
        for precision in ("float32", "float16"):
            index = TemplateIndex.build(analyzer.embedder.dim, ids, embeddings[keep], precision=precision)
            found[precision] = index.search(query, 5)
        (scores32, ids32), (scores16, ids16) = found["float32"], found["float16"]
        if scores32[0, 0] - scores32[0, 1] > 2 * FLOAT16_SCORE_BOUND:
            assert ids16[0, 0] == ids32[0, 0], labels[leave_out]
        exact = embeddings[ids16[0]] @ query[0] / np.linalg.norm(embeddings[ids16[0]], axis=1)
        exact /= np.linalg.norm(query[0])
        assert np.abs(scores16[0] - exact).max() <= FLOAT16_SCORE_BOUND + 1e-6
