"""``Gallery.search``: the best templates grouped by identity, best first, as a brute force ranks them."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest

from appliance.gallery.gallery import Gallery
from tests.synthetic import unit_vectors

D = 128  # the shared gallery fixture's (tests/unit/conftest.py)


@pytest.mark.parametrize("identities", [1, 2, 3])
def test_candidates_are_each_identitys_best_template_ranked_as_a_brute_force_ranks_them(
    gallery: Gallery, identities: int
) -> None:
    rng = np.random.default_rng(7)
    people: Dict[str, np.ndarray] = {}
    for person in range(5):
        centre = rng.normal(size=D)
        templates = centre + 0.8 * rng.normal(size=(3, D))
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        people[f"p{person}"] = templates.astype(np.float32)
        gallery.add(f"p{person}", f"Person {person}", people[f"p{person}"])
    queries = np.concatenate([unit_vectors(20, 3), np.concatenate(list(people.values()))[::2] + 0.01])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = gallery.search(queries.astype(np.float32), identities=identities)
    assert len(found) == len(queries)
    for query, candidates in zip(queries, found):
        best = {person: float(np.max(templates @ query)) for person, templates in people.items()}
        expected = sorted(best, key=lambda person: -best[person])[:identities]
        assert [c.identity_id for c in candidates] == expected
        for candidate in candidates:  # float16 storage: scores within its rounding
            assert candidate.score == pytest.approx(best[candidate.identity_id], abs=2e-3)
            assert candidate.name == f"Person {candidate.identity_id[1:]}" and candidate.impostor is None
        assert [c.score for c in candidates] == sorted((c.score for c in candidates), reverse=True)


def test_an_empty_gallery_gives_no_candidates_and_a_count_below_one_is_refused(gallery: Gallery) -> None:
    assert gallery.search(unit_vectors(2, 1)) == [[], []]
    gallery.add("ada", "Ada", unit_vectors(1, 2))
    assert [c.identity_id for c in gallery.search(unit_vectors(1, 2))[0]] == ["ada"]  # fewer than asked
    with pytest.raises(ValueError, match="identities must be ≥ 1, got 0"):
        gallery.search(unit_vectors(1, 2), identities=0)
