"""The long-run reliability campaign: faults by the hundred, a million inputs per parser, every write point.

    python -m bench.reliability [--quick] [--json OUT] [--only faults fuzz crash]
                                [--broker-kills N] [--daemon-kills N] [--inputs N] [--atheris-s S]
                                [--workers 2] [--stores gallery outbox pointer] [--markdown OUT.md]
    python -m bench.reliability --render OUT.json [--markdown OUT.md]

Three parts, each its own module (runnable alone), none of them run in CI
(``tests/integration/test_reliability_campaign.py`` runs each at a tiny size so the command keeps
working):

1. ``faults`` (:mod:`bench.reliability.faults`): 100 broker SIGKILLs during an event stream and 50
   daemon SIGKILLs at random points of a busy run (``face-appliance run`` on the CPU back-end, a real
   Mosquitto, a looping video); every event the daemon wrote must reach a consumer (by ``event_id``)
   or have had the broker's PUBACK (a broker SIGKILLed between its PUBACK and forwarding the event
   loses it from its memory: counted apart).
2. ``fuzz`` (:mod:`bench.reliability.fuzz`): 10⁶ inputs for each parser (configuration, MQTT
   commands, images, gallery bundles, model packages, UDS requests) through the oracles of
   ``tests/fuzz``, in ``--workers`` processes, after a coverage-guided atheris phase where atheris is
   installed; no crash (an exception other than the parser's documented error), no violation, no
   input over the per-input time bound.
3. ``crash`` (:mod:`bench.reliability.crash`): the writers of the gallery, the outbox and the
   active-model pointer killed at every one of their write points (and torn at every write); each
   kill re-opened and found in the state before or after the operation.

Printed: the machine, a markdown table with one row per check and what it reached (the README's
*Reliability* table, "long run" column), then the details per fuzz lane and per writer operation.
``--json`` writes all figures. ``--quick`` runs every part small (a few minutes). The exit status is 1
when anything was lost, crashed, hung or found inconsistent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..machine import describe

logger = logging.getLogger(__name__)

PARTS = ("faults", "fuzz", "crash")
#: (full, --quick) sizes.
SIZES: Dict[str, Tuple[Any, Any]] = {
    "broker_kills": (100, 3),
    "daemon_kills": (50, 2),
    "inputs": (1_000_000, 5_000),
    "atheris_s": (60.0, 5.0),
}
#: The README's row names of the fuzz targets.
FUZZ_ROWS = {
    "config": "fuzz: config",
    "commands": "fuzz: MQTT commands",
    "images": "fuzz: images (`enroll`, `detect`)",
    "bundle": "fuzz: gallery bundle",
    "packages": "model packages",
    "uds": "UDS server",
}


def _count(number: float) -> str:
    """``1 000 000``: thousands separated by a thin space, as in the README."""
    return f"{int(number):,}".replace(",", "\u202f")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _fuzz_rows(report: Dict[str, Any]) -> List[Tuple[str, str]]:
    rows = []
    for target, entry in report["targets"].items():
        lanes = ", ".join(
            f"{name.split(': ', 1)[1]} {_count(lane['inputs'])}" for name, lane in entry["lanes"].items()
        )
        guided = entry.get("coverage_guided")
        guided_text = f" + {_count(guided)} coverage-guided (atheris)" if guided else ""
        failures = f"{entry['crashes']} crashes, {entry['violations']} violations, {entry['hangs']} hangs"
        rows.append(
            (
                FUZZ_ROWS[target],
                f"{_count(entry['inputs'])} inputs ({lanes}){guided_text}: {failures} "
                f"(bound {report['hang_bound_s']:g} s per input), {_duration(entry['seconds'])} of worker time",
            )
        )
    return rows


def _broker_log(figures: Dict[str, Any]) -> str:
    """What the broker's debug log says it did with the events (:func:`tests.fault_runs.broker_accounting`)."""
    if not figures:
        return "no broker log"
    text = (
        f"its log: {_count(figures['acknowledged'])} acknowledged to the daemon, {_count(figures['forwarded'])} "
        f"sent on to the consumer"
    )
    if figures["held_when_killed"]:
        text += f", {figures['held_when_killed']} held for an absent consumer when it was killed"
    return text


def _fault_rows(report: Dict[str, Any]) -> List[Tuple[str, str]]:
    rows = []
    outages = report.get("broker_outages")
    if outages:
        rows.append(
            (
                "broker SIGKILL + restart",
                f"{outages['kills']} kills during an event stream: {_count(outages['events_written'])} events "
                f"written, {_count(outages['events_received'])} delivered, {len(outages['lost_by_appliance'])} "
                f"lost by the appliance, {len(outages['lost_after_puback'])} lost by the broker after its PUBACK "
                f"({_broker_log(outages.get('broker') or {})}), "
                f"{outages['duplicates']} redelivered, {outages['recoveries']} reconnections, "
                f"{len(outages['failures'])} failures, {_duration(outages['seconds'])}",
            )
        )
    kills = report.get("daemon_sigkills")
    if kills:
        rows.append(
            (
                "daemon SIGKILL at random",
                f"{kills['kills']} kills 0–3 s after each run's first event, enrolments and removals in flight: "
                f"stores intact ({len(kills['failures'])} failures), {_count(kills['events_written'])} events "
                f"written, {_count(kills['events_received'])} delivered, {len(kills['lost_by_appliance'])} lost "
                f"by the appliance, {len(kills['lost_after_puback'])} by the broker, {_duration(kills['seconds'])}",
            )
        )
    return rows


def _crash_rows(report: Dict[str, Any]) -> List[Tuple[str, str]]:
    operations = report["operations"]
    points = sum(op["write_points"] for op in operations)
    kills = sum(op["kills"] + op["torn_kills"] for op in operations)
    findings = sum(len(op["findings"]) for op in operations)
    per_store: Dict[str, List[str]] = {}
    for op in operations:
        per_store.setdefault(op["store"], []).append(
            f"{op['operation'].split(': ', 1)[1]} {op['write_points']}"
        )
    stores = "; ".join(f"{store}: {', '.join(items)}" for store, items in per_store.items())
    return [
        (
            "crash consistency (every write point)",
            f"{len(operations)} writer operations, {points} write points ({stores}); {_count(kills)} kills "
            f"(before each point, and torn at each write): {findings} inconsistent, every re-open found the "
            f"state before or after" + ("" if not findings else " — except the findings listed"),
        )
    ]


def table(results: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The rows (check, what the long run reached)."""
    rows: List[Tuple[str, str]] = []
    if "fuzz" in results:
        rows += _fuzz_rows(results["fuzz"])
    if "faults" in results:
        rows += _fault_rows(results["faults"])
    if "crash" in results:
        rows += _crash_rows(results["crash"])
    return rows


def details(results: Dict[str, Any]) -> str:
    """Markdown: per fuzz lane and per writer operation."""
    text = ""
    if "fuzz" in results:
        text += "\n| fuzz lane | inputs | per s (one worker) | slowest input (s) | crashes | violations | hangs |\n"
        text += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        for entry in results["fuzz"]["targets"].values():
            for name, lane in entry["lanes"].items():
                text += (
                    f"| {name} | {_count(lane['inputs'])} | {lane['per_s']} | {lane['slowest_s']} | "
                    f"{lane['crashes']} | {lane['violations']} | {lane['hangs']} |\n"
                )
        atheris = results["fuzz"].get("atheris")
        if isinstance(atheris, dict):
            text += "\n| coverage-guided (atheris) | executions | seconds | coverage (edges) | corpus | failures |\n"
            text += "| --- | ---: | ---: | ---: | ---: | ---: |\n"
            for target, run in atheris.items():
                text += (
                    f"| {target} | {_count(run['inputs'])} | {run['seconds']} | {run['coverage']} | {run['corpus']} "
                    f"| {len(run['failures'])} |\n"
                )
        elif atheris:
            text += f"\ncoverage-guided: {atheris}\n"
    if "crash" in results:
        text += "\n| writer operation | write points (by call) | kills: outcome | torn writes: outcome | commit point | temporary files left |\n"
        text += "| --- | --- | --- | --- | ---: | --- |\n"
        for op in results["crash"]["operations"]:
            calls = ", ".join(f"{call} {count}" for call, count in op["calls"].items())
            left = (
                ", ".join(f"{name} ×{count}" for name, count in op["temporary_files_left"].items()) or "none"
            )
            text += (
                f"| {op['operation']} | {op['write_points']}: {calls} | {json.dumps(op['outcomes'])} | "
                f"{json.dumps(op['torn_outcomes'])} | {op['commit_point'] or '–'} | {left} |\n"
            )
    return text


def failed(results: Dict[str, Any]) -> List[str]:
    """What went wrong, in words (empty: nothing)."""
    problems = []
    for name in ("broker_outages", "daemon_sigkills"):
        part = results.get("faults", {}).get(name)
        if part and (part["lost_by_appliance"] or part["failures"]):
            problems.append(f"{name}: {len(part['lost_by_appliance'])} lost, failures {part['failures'][:5]}")
    for target, entry in results.get("fuzz", {}).get("targets", {}).items():
        if entry["crashes"] or entry["violations"] or entry["hangs"]:
            problems.append(
                f"fuzz {target}: {entry['crashes']} crashes, {entry['violations']} violations, {entry['hangs']} hangs"
            )
    if results.get("fuzz", {}).get("setup_errors"):
        problems.append(f"fuzz lanes not set up: {[e['lane'] for e in results['fuzz']['setup_errors']]}")
    for op in results.get("crash", {}).get("operations", []):
        if op["findings"] or not op["deterministic"]:
            problems.append(f"crash {op['operation']}: {op['findings'][:3]}")
    return problems


def report_text(
    machine: Dict[str, str], wall: float, seconds: Dict[str, float], results: Dict[str, Any]
) -> str:
    """The printed report: the machine, the wall time, the table, the details, what failed."""
    problems = failed(results)
    text = "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + "\n"
    text += f"wall time: {_duration(wall)} ({', '.join(f'{part} {_duration(s)}' for part, s in seconds.items())})\n"
    text += "\n| check | long run |\n| --- | --- |\n"
    text += "".join(f"| {check} | {reached} |\n" for check, reached in table(results))
    text += details(results)
    verdict = (
        "\n".join(f"FAILED: {problem}" for problem in problems)
        if problems
        else "nothing lost, crashed, hung or inconsistent"
    )
    return text + "\n" + verdict + "\n"


def render(path: Path) -> str:
    """The printed report of an earlier run, from its ``--json`` document (no run)."""
    document = json.loads(path.read_text())
    results = {part: document[part] for part in PARTS if part in document}
    return report_text(document["machine"], document["wall_s"], document["part_s"], results)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part small (minutes, not an hour)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the printed report here")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--broker-kills", type=int, default=None, help="broker SIGKILLs (100; --quick 3)")
    parser.add_argument("--daemon-kills", type=int, default=None, help="daemon SIGKILLs (50; --quick 2)")
    parser.add_argument(
        "--inputs", type=int, default=None, help="seeded inputs per parser (10⁶; --quick 5000)"
    )
    parser.add_argument(
        "--atheris-s", type=float, default=None, help="coverage-guided s per parser (60; --quick 5)"
    )
    parser.add_argument("--workers", type=int, default=2, help="fuzz worker processes (default 2)")
    parser.add_argument(
        "--stores", nargs="+", default=["gallery", "outbox", "pointer"], help="crash sweep stores"
    )
    parser.add_argument("--no-torn", action="store_true", help="crash sweep: no torn writes")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--render", type=Path, default=None, help="print the report of an earlier --json; no run"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        text = render(args.render)
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    size = {key: full_quick[1 if args.quick else 0] for key, full_quick in SIZES.items()}
    for key in size:
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    started = time.monotonic()
    machine = describe()
    results: Dict[str, Any] = {}
    seconds: Dict[str, float] = {}
    if "crash" in args.only:
        from .crash import sweep

        began = time.monotonic()
        results["crash"] = sweep(args.stores, not args.no_torn)
        seconds["crash"] = time.monotonic() - began
    if "fuzz" in args.only:
        from .fuzz import campaign

        began = time.monotonic()
        results["fuzz"] = campaign(
            size["inputs"], workers=args.workers, atheris_s=size["atheris_s"], seed=args.seed
        )
        seconds["fuzz"] = time.monotonic() - began
    if "faults" in args.only:
        from .faults import run

        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
            results["faults"] = run(size["broker_kills"], size["daemon_kills"], Path(folder), args.seed)
        seconds["faults"] = time.monotonic() - began
    wall = time.monotonic() - started
    rows = table(results)
    problems = failed(results)
    text = report_text(machine, wall, seconds, results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        document = {
            "command": " ".join(
                ["python -m bench.reliability", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": machine,
            "sizes": size,
            "wall_s": round(wall, 1),
            "part_s": {part: round(s, 1) for part, s in seconds.items()},
            "table": [{"check": check, "long_run": reached} for check, reached in rows],
            "problems": problems,
            **results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
