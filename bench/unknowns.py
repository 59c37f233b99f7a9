"""Unknown visitors' clusters against who they are: ``unknowns.cluster_threshold`` measured.

    python -m bench.unknowns [--thresholds 0.40,0.45,...] [--orders 20] [--photos N] [--json OUT]
    python -m bench.unknowns --render OUT.json

The daemon's own clustering (:meth:`SightingStore.put <appliance.sightings.store.SightingStore.put>`
with :class:`~appliance.sightings.store.ClusterSettings`, its encrypted store in a temporary folder)
is fed the MobileFaceNet embeddings of the labelled photos of ``shared/data/faces`` (the largest face
of each, labels from ``faces_identities.csv``), one after another in ``--orders`` random orders,
at each threshold. A face joins the cluster whose centroid it matches best at the threshold or
starts one, and the centroid follows its members, so the order matters: every order is measured.

Per threshold, means over the orders (worst order in brackets where it matters):

* **false merges**: clusters holding faces of more than one person. This is the error that costs:
  ``gallery enroll-unknown`` enrols a cluster's crops as one identity, so a merged cluster enrols
  one person under another's name;
* **pairwise precision**: of two faces put in one cluster, the share that are one person;
* **pairwise recall**: of two faces of one person, the share put in one cluster;
* **clusters per person**: for people with two photos or more, how many clusters their faces make
  (1 is ideal; a split is benign: the operator sees the same visitor twice).

The photos are of public figures over years, lighting and make-up — harder than one visitor's
passages in front of one door within ``retention_h``; a threshold without false merges here is a
conservative one.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .machine import describe

REPO = Path(__file__).resolve().parent.parent
DEFAULT_THRESHOLDS = "0.40,0.45,0.50,0.55,0.60,0.65,0.70"
MODEL_VERSION = "bench@unknowns"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def thresholds_list(text: str) -> List[float]:
    """``"0.4,0.5"`` → ``[0.4, 0.5]``; each in (0, 1)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 < value < 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"expected numbers between 0 and 1, got {text!r}")
    return values


def real_embeddings(models: Path, data: Path, photos: int) -> Tuple[np.ndarray, List[str]]:
    """``((n, d) float32 embeddings, n labels)`` of the first ``photos`` labelled photos (0: all)."""
    from appliance.config_load import validate_config
    from appliance.runtime.loading import load_analyzer

    from .gallery import labelled_face_embeddings

    config = validate_config({"models": {"dir": str(models)}})
    with load_analyzer(config, liveness=False) as analyzer:
        embeddings, labels = labelled_face_embeddings(analyzer, data, photos)
    return embeddings, labels


def cluster_once(embeddings: np.ndarray, order: Sequence[int], threshold: float, folder: Path) -> List[str]:
    """The cluster id each face joined (indexed like ``embeddings``), fed in ``order`` to a fresh store."""
    from appliance.sightings.store import ClusterSettings, SeenFace, SightingStore

    settings = ClusterSettings(threshold, 3600.0, 10_000, 1)
    crop = np.zeros((112, 112, 3), np.uint8)
    joined: List[str] = [""] * len(embeddings)
    with SightingStore.open(
        folder / "sightings.db", folder / "gallery.key", clock=lambda: 1_000_000.0
    ) as store:
        for step, face in enumerate(order):
            seen = SeenFace(f"e{step}", 1_000_000.0, "bench", "unknown", None, None, 0.5, MODEL_VERSION,
                            embeddings[face], crop)  # fmt: skip
            cluster = store.put(seen, 0.0, settings)
            assert cluster is not None
            joined[face] = cluster
    return joined


def scores(labels: Sequence[str], clusters: Sequence[str]) -> Dict[str, float]:
    """False merges, pairwise precision and recall, clusters per person, of one clustering."""
    label = np.asarray(labels)
    cluster = np.asarray(clusters)
    same_person = label[:, None] == label[None, :]
    same_cluster = cluster[:, None] == cluster[None, :]
    pairs = np.triu(np.ones_like(same_person), 1)
    together = int(np.sum(same_cluster & pairs))
    related = int(np.sum(same_person & pairs))
    right = int(np.sum(same_cluster & same_person & pairs))
    members: Dict[str, set] = {}
    for person, joined in zip(labels, clusters):
        members.setdefault(joined, set()).add(person)
    spread = [len(set(cluster[label == person])) for person in set(labels) if np.sum(label == person) > 1]
    return {
        "clusters": len(members),
        "false_merges": sum(1 for people in members.values() if len(people) > 1),
        "pairwise_precision": right / together if together else 1.0,
        "pairwise_recall": right / related if related else 1.0,
        "clusters_per_person": float(np.mean(spread)) if spread else 1.0,
    }


def run(
    embeddings: np.ndarray, labels: List[str], thresholds: Sequence[float], orders: int
) -> List[Dict[str, Any]]:
    rng = random.Random(0)
    sequences = [rng.sample(range(len(labels)), len(labels)) for _ in range(orders)]
    rows = []
    for threshold in thresholds:
        started = time.perf_counter()
        runs = []
        for order in sequences:
            with tempfile.TemporaryDirectory(prefix="bench-unknowns-") as folder:
                runs.append(scores(labels, cluster_once(embeddings, order, threshold, Path(folder))))
        row = {"threshold": threshold, "orders": orders}
        for key in runs[0]:
            values = [one[key] for one in runs]
            row[key] = round(float(np.mean(values)), 4)
        row["false_merges_worst"] = max(one["false_merges"] for one in runs)
        row["orders_with_a_false_merge"] = sum(1 for one in runs if one["false_merges"])
        rows.append(row)
        print(
            f"  threshold {threshold:g}: false merges {row['false_merges']} (worst {row['false_merges_worst']}), "
            f"precision {row['pairwise_precision']:.3f}, recall {row['pairwise_recall']:.3f}, "
            f"{row['clusters_per_person']:.2f} clusters per person ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return rows


def render(document: Dict[str, Any]) -> None:
    people = document["people"]
    print("machine: " + ", ".join(f"{k} {v}" for k, v in document["machine"].items()))
    print(
        f"{document['faces']} faces of {people['all']} people ({people['with_two_or_more']} with two or more), "
        f"{document['rows'][0]['orders']} random orders per threshold"
    )
    print()
    print(
        "| cluster_threshold | clusters | false merges (worst; orders with one) | pairwise precision "
        "| pairwise recall | clusters per person |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in document["rows"]:
        print(
            f"| {row['threshold']:g} | {row['clusters']:.1f} | {row['false_merges']:.2f} "
            f"({row['false_merges_worst']}; {row['orders_with_a_false_merge']}/{row['orders']}) | "
            f"{row['pairwise_precision']:.3f} | {row['pairwise_recall']:.3f} | {row['clusters_per_person']:.2f} |"
        )
    clean = [row["threshold"] for row in document["rows"] if row["false_merges_worst"] == 0]
    print()
    print(
        f"lowest threshold without a false merge in any order: {min(clean):g}"
        if clean
        else "every threshold measured merged two people in some order"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", type=thresholds_list, default=thresholds_list(DEFAULT_THRESHOLDS))
    parser.add_argument("--orders", type=positive_int, default=20, help="random orders per threshold")
    parser.add_argument("--photos", type=int, default=0, help="the first N labelled photos (0: all)")
    parser.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="print the table of an earlier --json")
    args = parser.parse_args(argv)
    if args.render is not None:
        render(json.loads(args.render.read_text()))
        return 0
    embeddings, labels = real_embeddings(args.models, args.data, args.photos)
    counts = {person: labels.count(person) for person in set(labels)}
    document = {
        "machine": describe(),
        "faces": len(labels),
        "people": {"all": len(counts), "with_two_or_more": sum(1 for n in counts.values() if n > 1)},
        "rows": run(embeddings, labels, args.thresholds, args.orders),
    }
    print()
    render(document)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
