"""Finding a card's holder: what a card read at the reader costs the pipeline thread.

    python -m bench.cards [--sizes 1000,10000,100000] [--lookups 200] [--json OUT]

Per gallery size, a store is filled with identities without a face holding two cards each (one
transaction, the store's own policy rows and card index), then ``--lookups`` cards of random holders
are looked up one at a time, side by side:

* ``index``: :meth:`TemplateStore.card_holders`, the ``cards`` table (schema 9);
* ``scan``: every identity's stored credentials read and parsed, as the first version of the lookup
  did (a ``LIKE`` over the credentials column, then JSON), kept here as the baseline.

Both must name the same holder for every card. Reported: p50 / p99 / max in ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from appliance.access.policy import IdentityPolicy
from appliance.gallery.store import TemplateStore, utc_now

from .arguments import positive_int_list
from .machine import describe


def _card(number: int, kind: int) -> str:
    return (
        f"w26:{number % 256}:{number // 256 % 65536}"
        if kind == 0
        else f"w34:{number % 65536}:{number // 65536}"
    )


def fill(store: TemplateStore, identities: int) -> None:
    """``identities`` identities without a face, two cards each, in one transaction."""
    now = utc_now()
    with store._transaction() as db:  # the store's own policy rows and card index, in bulk
        for number in range(identities):
            identity = f"card-{number}"
            db.execute(
                "INSERT INTO identities (id, name, external_id, consent_at, created_at) VALUES (?, ?, NULL, ?, ?)",
                (identity, f"Card {number}", now, now),
            )
            store._write_policy(db, identity, IdentityPolicy(cards=(_card(number, 0), _card(number, 1))))
        store._bump(db)


def scan(store: TemplateStore, card: str) -> List[str]:
    """The baseline: every identity's credentials read and parsed (the first lookup)."""
    with store._lock:
        rows = store._db.execute(  # type: ignore[union-attr]
            "SELECT id, credentials FROM identities WHERE credentials LIKE ? ORDER BY id",
            (f"%{json.dumps(card)}%",),
        ).fetchall()
    return [
        str(identity) for identity, credentials in rows if card in json.loads(credentials).get("cards", [])
    ]


def _timed(lookup: Callable[[str], List[str]], cards: List[str]) -> Dict[str, Any]:
    times: List[float] = []
    found: List[List[str]] = []
    for card in cards:
        started = time.perf_counter()
        found.append(lookup(card))
        times.append((time.perf_counter() - started) * 1000)
    values = np.array(times)
    return {
        "ms_p50": round(float(np.percentile(values, 50)), 4),
        "ms_p99": round(float(np.percentile(values, 99)), 4),
        "ms_max": round(float(values.max()), 4),
        "found": found,
    }


def run(sizes: List[int], lookups: int) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        rng = np.random.default_rng(size)
        with tempfile.TemporaryDirectory(prefix="bench-cards-") as folder:
            with TemplateStore.open(Path(folder) / "gallery.db", Path(folder) / "gallery.key") as store:
                fill(store, size)
                holders = rng.integers(0, size, lookups)
                cards = [_card(int(n), int(k)) for n, k in zip(holders, rng.integers(0, 2, lookups))]

                def index(card: str) -> List[str]:
                    return [identity.id for identity in store.card_holders(card)]

                indexed, scanned = _timed(index, cards), _timed(lambda card: scan(store, card), cards)
        expected = [[f"card-{int(n)}"] for n in holders]
        if indexed.pop("found") != expected or scanned.pop("found") != expected:
            raise SystemExit(f"at {size} identities a lookup named another holder")
        rows.append({"identities": size, "cards": 2 * size, "index": indexed, "scan": scanned})
        print(
            f"  {size:,} identities: index p50 {indexed['ms_p50']} ms, scan p50 {scanned['ms_p50']} ms",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_int_list, default=[1000, 10_000, 100_000])
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.lookups < 1:
        parser.error("--lookups must be ≥ 1")
    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    rows = run(args.sizes, args.lookups)
    print("\n| identities (2 cards each) | index ms p50 / p99 / max | scan ms p50 / p99 / max |")
    print("| ---: | ---: | ---: |")
    for row in rows:
        cells = [
            " / ".join(str(row[kind][key]) for key in ("ms_p50", "ms_p99", "ms_max"))
            for kind in ("index", "scan")
        ]
        print(f"| {row['identities']:,} | {cells[0]} | {cells[1]} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "card_lookup": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
