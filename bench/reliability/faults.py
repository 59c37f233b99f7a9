"""Broker outages and daemon SIGKILLs by the hundred, with every event accounted for by ``event_id``.

    python -m bench.reliability.faults [--broker-kills 100] [--daemon-kills 50] [--seed 12] [--json OUT]

Both runs are :mod:`tests.fault_runs` (the code ``tests/integration/test_faults.py`` runs three
times in CI), on the CPU back-end with the real models, a real Mosquitto on loopback and a looping
door video in which an enrolled person and a stranger keep walking up:

* **broker outages**: the broker is SIGKILLed while the daemon is connected and has just written an
  event, and restarted after a random 0.2–2 s; a consumer with a persistent session records what
  the broker delivers;
* **daemon SIGKILLs**: the daemon is SIGKILLed a random 0–3 s after its run wrote its first event,
  while it streams events and takes enrolments and removals; after each kill the outbox and the gallery are
  checked (integrity, the store's own check, the index) and what the outbox holds is added to what
  was written; a last start delivers what the killed runs left.

An event is *written* when the daemon printed it (``--print-events`` prints after the outbox commit)
or a killed daemon left it in its outbox; *lost* when it was written and never received. A lost event
that the outbox no longer holds and did not drop had its PUBACK from the broker (the outbox deletes
an event only then): it was lost by the broker, SIGKILLed after acknowledging it and before
forwarding it (Mosquitto keeps messages in memory); the others would be lost by the appliance. The
figures go into ``python -m bench.reliability``'s table (its first part).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent.parent
#: A broker outage lasts this long (seconds, uniformly drawn).
OUTAGE_S = (0.2, 2.0)
#: A daemon is killed this long after its run wrote its first event (seconds, uniformly drawn).
KILL_AFTER_S = (0.0, 3.0)

logger = logging.getLogger(__name__)


def run(broker_kills: int, daemon_kills: int, workdir: Path, seed: int = 12) -> Dict[str, Any]:
    """Both fault runs; their :meth:`~tests.fault_runs.DeliveryReport.summary` figures."""
    sys.path.insert(0, str(REPO))
    from appliance.config_load import validate_config
    from appliance.runtime.loading import load_analyzer
    from tests.conftest import SHARED_DIR
    from tests.fault_runs import broker_outages, daemon_sigkills, door_storage
    from tests.mqtt_broker import MosquittoBroker, Recorder

    models, data = SHARED_DIR / "models", SHARED_DIR / "data"
    rng = random.Random(seed)
    report: Dict[str, Any] = {"seed": seed}
    config = validate_config({"models": {"dir": str(models)}})
    with load_analyzer(config, liveness=False) as analyzer:
        if broker_kills > 0:
            folder = workdir / "broker-outages"
            storage = door_storage(folder / "state", analyzer, data)
            logger.info("broker outages: %d SIGKILLs of the broker during an event stream", broker_kills)
            outages = broker_outages(
                folder, storage, models, data, broker_kills, lambda kill: rng.uniform(*OUTAGE_S)
            )
            report["broker_outages"] = outages.summary()
        if daemon_kills > 0:
            folder = workdir / "daemon-sigkills"
            storage = door_storage(folder / "state", analyzer, data)
            logger.info("daemon SIGKILLs: %d, each 0-3 s after its run's first event", daemon_kills)
            with MosquittoBroker(folder / "mosquitto") as broker, Recorder(
                broker.host, broker.port, "#"
            ) as recorder:
                kills = daemon_sigkills(
                    folder,
                    storage,
                    models,
                    data,
                    broker,
                    recorder,
                    analyzer,
                    daemon_kills,
                    rng,
                    KILL_AFTER_S,
                    after_event=True,
                )
            report["daemon_sigkills"] = kills.summary()
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-kills", type=int, default=100)
    parser.add_argument("--daemon-kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as folder:
        report = run(args.broker_kills, args.daemon_kills, Path(folder), args.seed)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text)
    failed = [
        part
        for part in report.values()
        if isinstance(part, dict) and (part["lost_by_appliance"] or part["failures"])
    ]
    print(text if not args.json else f"written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
