"""The daemon end to end: start-up to READY, frame to published event, and a soak with resource sampling.

    python -m bench.daemon [--minutes 2] [--sample-s 10] [--cameras 1 2] [--config FILE] [--data-dir DIR]
                           [--json OUT]

Starts a real Mosquitto on a free loopback port, enrols one person, writes a looping video in which
that person and a stranger keep walking up to the door, and runs ``face-appliance run`` on it as a
subprocess (CPU back-end; with ``--config``, the ``[models]`` and ``[backend]`` of the appliance's
file — TensorRT on a Jetson, from the engine cache ``face-appliance engines build`` filled) with a
``NOTIFY_SOCKET`` the bench reads. It reports:

* start-up: process start → ``READY=1`` (models already fetched);
* latency: frame capture → event in the outbox (the event's ``latency_ms``) plus outbox → received by
  a subscriber, p50/p90/p99 over every event;
* soak: resident memory, threads, open files and outbox depth sampled every ``--sample-s``; growth
  per hour by a least-squares line over the second half of the run (after warm-up);
* the daemon's own figures from its last ``…/state`` (fps, stage latencies, dropped frames, and
  which back-end serves each model, with the engines' precisions);
* per camera: frames processed per second (between the first ``…/state`` after READY and the last),
  frames and events. ``--cameras 2`` runs the daemon with two cameras (``[[cameras]]``) playing the
  same video, so every passage is seen by both; ``--cameras 1 2`` runs one daemon after the other
  and prints both, to show what a second camera costs the first.

Use ``--minutes 20`` (or 60) for a real soak; the default is a short run. ``python -m bench.soak``
runs the same measurement as a soak (20 minutes by default) and prints every sample and a leak
verdict per resource (:func:`leak_report`); ``tests/integration/test_soak.py`` is its one-minute CI
version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from appliance.runtime.loading import load_analyzer

from .machine import describe

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEVICE = "bench-door"


def _proc(pid: int) -> Dict[str, float]:
    values: Dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    values["rss_mib"] = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    values["threads"] = float(line.split()[1])
        values["fds"] = float(len(os.listdir(f"/proc/{pid}/fd")))
    except OSError:
        pass
    return values


def _percentiles(values: List[float]) -> Dict[str, float]:
    if not values:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "p99": round(float(p99), 1),
        "max": round(max(values), 1),
    }


def _slope_per_hour(times: List[float], values: List[float]) -> Optional[float]:
    if len(times) < 4:
        return None
    half = len(times) // 2
    t, v = np.asarray(times[half:]), np.asarray(values[half:])
    if np.ptp(t) <= 0:
        return None
    return float(np.polyfit(t, v, 1)[0] * 3600)


#: Resources sampled in a soak, with the growth per hour above which the verdict is "growing" and a
#: unit: threads and file descriptors must not grow at all; memory may wobble (allocator, caches).
SOAK_LIMITS: Dict[str, Tuple[float, str]] = {
    "rss_mib": (20.0, "MiB"),
    "threads": (0.0, ""),
    "fds": (0.0, ""),
    "outbox": (0.0, "events"),
}


def leak_report(samples: List[Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """Per resource: first, last, max, growth per hour (least squares over the second half of the
    run, after warm-up) and a verdict.

    Verdicts: ``flat`` (the second half stays within the first half's range, or grows slower than
    :data:`SOAK_LIMITS`), ``growing`` (a leak, or a backlog for the outbox), ``too short`` (fewer
    than 4 samples).
    """
    report: Dict[str, Dict[str, Any]] = {}
    for key, (limit, unit) in SOAK_LIMITS.items():
        times = [s["t"] for s in samples if key in s]
        values = [s[key] for s in samples if key in s]
        if not values:
            continue
        slope = _slope_per_hour(times, values)
        half = len(values) // 2
        within_range = bool(values[:half]) and max(values[half:]) <= max(values[:half])
        if slope is None:
            verdict = "too short"
        elif within_range or slope <= limit:
            verdict = "flat"
        else:
            verdict = "growing"
        report[key] = {
            "first": round(values[0], 1),
            "last": round(values[-1], 1),
            "max": round(max(values), 1),
            "growth_per_hour": None if slope is None else round(slope, 2),
            "unit": unit,
            "verdict": verdict,
        }
    return report


def _per_camera(states: List[Dict[str, Any]], events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each camera's processed frames per second between the first and the last state (after READY),
    its frames and its events by decision."""
    first, last = states[0], states[-1]
    before = {camera["id"]: camera for camera in first.get("cameras", [])}
    span = float(last["uptime_s"]) - float(first["uptime_s"])
    rows: List[Dict[str, Any]] = []
    for camera in last.get("cameras", []):
        frames = int(camera["frames_processed"]) - int(
            before.get(camera["id"], {}).get("frames_processed", 0)
        )
        decisions: Dict[str, int] = {}
        for event in events:
            if event.get("camera_id") == camera["id"]:
                decisions[event["decision"]] = decisions.get(event["decision"], 0) + 1
        rows.append(
            {
                "id": camera["id"],
                "fps": round(frames / span, 2) if span > 0 else None,
                "frames": int(camera["frames_processed"]),
                "dropped": camera.get("dropped"),
                "events": sum(decisions.values()),
                "decisions": decisions,
            }
        )
    return rows


def appliance_tables(path: Path) -> Dict[str, Dict[str, Any]]:
    """The ``[models]`` and ``[backend]`` tables of the appliance's configuration file
    (:mod:`bench.appliance_file`), resolved, with TensorRT's engine cache where the appliance keeps it
    (``backend.tensorrt.engine_dir``, else under its ``[storage]``), so that the bench's daemon loads
    the engines ``face-appliance engines build`` made.

    Raises:
        ConfigError: the file is missing, not TOML, or those tables are invalid.
    """
    from .appliance_file import appliance_config

    config = appliance_config(path)
    backend = config.backend.model_dump(mode="json", exclude_none=True)
    backend["tensorrt"]["engine_dir"] = str(config.engine_dir)
    return {"models": config.models.model_dump(mode="json", exclude_none=True), "backend": backend}


def toml_tables(tables: Dict[str, Dict[str, Any]], path: Tuple[str, ...] = ()) -> str:
    """``{"table": {"key": value, "sub": {...}}}`` as TOML tables (values as JSON writes them, which
    TOML reads the same: strings, numbers, booleans, lists of them)."""
    lines: List[str] = []
    for name, table in tables.items():
        here = (*path, name)
        lines.append(f"[{'.'.join(here)}]")
        lines += [
            f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)
        ]
        nested = {key: value for key, value in table.items() if isinstance(value, dict)}
        if nested:
            lines.append(toml_tables(nested, here).rstrip("\n"))
    return "\n".join(lines) + "\n"


def run(
    minutes: float,
    sample_s: float,
    workdir: Path,
    cameras: int = 1,
    appliance: Optional[Dict[str, Dict[str, Any]]] = None,
    data: Path = SHARED / "data",
) -> Dict[str, Any]:
    """One daemon run of ``minutes`` on ``cameras`` video cameras (1: a ``[camera]`` table as a
    single-camera appliance has; more: ``[[cameras]]`` ``cam0``, ``cam1``, … on the same video), on
    the CPU back-end with ``shared/models``, or on ``appliance``'s models and back-end
    (:func:`appliance_tables`); the photos from ``data``."""
    sys.path.insert(0, str(REPO))
    from appliance.config_load import validate_config
    from appliance.enrollment import Enroller
    from appliance.gallery.gallery import Gallery
    from appliance.vision.image import read_image
    from tests.mqtt_broker import MosquittoBroker, Recorder
    from tests.support import make_passage_video

    tables = appliance or {"models": {"dir": str(SHARED / "models")}}
    storage = workdir / "state"
    # The enrolment runs on the same back-end as the daemon: a Jetson has no CPU back-end installed.
    config = validate_config({**tables, "storage": {"dir": str(storage)}})
    with load_analyzer(config, liveness=False) as analyzer, Gallery.open(
        config, analyzer.embedder.version, analyzer.embedder.dim
    ) as gallery:
        Enroller(analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", read_image(data / "faces/fr_obama/obama.jpg"))]
        )
    video = make_passage_video(
        workdir / "door.avi",
        [
            (None, 5),
            (data / "faces/fr_obama/obama2.jpg", 30),
            (None, 15),
            (data / "faces/fr_kit_harington/john1.jpeg", 30),
            (None, 15),
        ],
    )
    broker = MosquittoBroker(workdir / "mosquitto").start()
    config_file = workdir / "appliance.toml"
    if cameras == 1:
        camera_tables = f'[camera]\nsource = "{video}"\nat_end = "loop"\n'
    else:
        camera_tables = "".join(
            f'[[cameras]]\nid = "cam{index}"\nsource = "{video}"\nat_end = "loop"\n'
            for index in range(cameras)
        )
    config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n[storage]\ndir = "{storage}"\n'
        f'{camera_tables}[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f"[metrics]\nstate_interval_s = 5.0\n{toml_tables(tables)}"
    )
    notify = workdir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(0.2)
    received: List[tuple] = []
    recorder = Recorder(broker.host, broker.port, f"face-appliance/{DEVICE}/#").start()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(config_file)],
        cwd=REPO,
        env={**os.environ, "NOTIFY_SOCKET": str(notify)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready_s: Optional[float] = None
    samples: List[Dict[str, float]] = []
    try:
        deadline = started + 120
        while ready_s is None and time.monotonic() < deadline:
            try:
                if b"READY=1" in listener.recv(4096):
                    ready_s = time.monotonic() - started
            except socket.timeout:
                if process.poll() is not None:
                    raise RuntimeError("the daemon exited during start-up") from None
        end = time.monotonic() + minutes * 60
        next_sample = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_sample:
                sample = {"t": time.monotonic() - started, **_proc(process.pid)}
                states = recorder.on(f"face-appliance/{DEVICE}/state")
                if states:
                    sample["outbox"] = float(json.loads(states[-1].payload)["outbox"].get("depth", 0))
                samples.append(sample)
                next_sample += sample_s
            time.sleep(0.2)
        events_messages = recorder.on(f"face-appliance/{DEVICE}/events")
        for message in events_messages:
            received.append((message, json.loads(message.payload)))
        states = [json.loads(message.payload) for message in recorder.on(f"face-appliance/{DEVICE}/state")]
        state = states[-1]
        running = [
            s for s in states if s.get("ready")
        ] or states  # from READY on: no model loading in the rate
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        recorder.close()
        broker.stop()
        listener.close()
    latencies = [float(event["latency_ms"]) for _, event in received]
    publish_delays = [
        max(0.0, message.received_at - datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp())
        * 1000
        for message, event in received
    ]
    total = [a + b for a, b in zip(latencies, publish_delays)]
    times = [s["t"] for s in samples]
    soak: Dict[str, Dict[str, Optional[float]]] = {}
    for key in ("rss_mib", "threads", "fds", "outbox"):
        values = [s.get(key, 0.0) for s in samples]
        if values:
            slope = _slope_per_hour(times, values)
            soak[key] = {
                "first": round(values[0], 1),
                "last": round(values[-1], 1),
                "max": round(max(values), 1),
                "growth_per_hour": None if slope is None else round(slope, 2),
            }
    decisions: Dict[str, int] = {}
    for _, event in received:
        decisions[event["decision"]] = decisions.get(event["decision"], 0) + 1
    return {
        "ready_s": None if ready_s is None else round(ready_s, 2),
        "minutes": minutes,
        "events": len(received),
        "decisions": decisions,
        "latency_ms": {
            "frame_to_outbox": _percentiles(latencies),
            "outbox_to_subscriber": _percentiles(publish_delays),
            "frame_to_subscriber": _percentiles(total),
        },
        "soak": soak,
        "samples": samples,
        "leaks": leak_report(samples),
        "daemon_state": {
            k: state.get(k) for k in ("fps", "frames", "latency_ms", "camera", "cameras", "outbox", "backend")
        },
        "cameras": _per_camera(running, [event for _, event in received]),
    }


def _print_report(report: Dict[str, Any], minutes: float) -> None:
    print(f"\nstart → READY=1: {report['ready_s']} s (target ≤ 5 s)")
    print(f"events: {report['events']} {report['decisions']} in {minutes:g} min")
    print("\n| latency | p50 ms | p90 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    for name, figures in report["latency_ms"].items():
        if figures:
            print(f"| {name} | {figures['p50']} | {figures['p90']} | {figures['p99']} | {figures['max']} |")
    print(
        "\n| resource | first | last | max | growth per hour (second half) |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for name, figures in report["soak"].items():
        print(
            f"| {name} | {figures['first']} | {figures['last']} | {figures['max']} | {figures['growth_per_hour']} |"
        )
    state = report["daemon_state"]
    print(
        f"\ndaemon: {state.get('fps')} fps, {state.get('frames')} frames, dropped {state.get('camera', {}).get('dropped')}"
    )
    print("stage latency (ms): " + json.dumps(state.get("latency_ms")))
    print("served by: " + _served_by(state.get("backend") or {}))


def _served_by(backend: Dict[str, Any]) -> str:
    """Each model's back-end from ``…/state``'s ``backend``: TensorRT with its engine's precision, or
    the back-end type (a model whose engine is not built yet runs on the CPU with ``fallback = "cpu"``)."""
    engines, precisions = backend.get("engines") or {}, backend.get("precisions") or {}
    if not engines:
        return str(backend.get("type"))
    return ", ".join(
        f"{name} {state.get('backend')} ({(precisions.get(name) or {}).get('precision') or state.get('state')})"
        for name, state in sorted(engines.items())
    )


def _print_cameras(reports: Dict[int, Dict[str, Any]]) -> None:
    print(
        "\n| cameras | camera | fps | frames | dropped | events | granted | unknown | denied |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for count, report in reports.items():
        rows = report["cameras"]
        for row in rows:
            decisions = row["decisions"]
            print(
                f"| {count} | {row['id']} | {row['fps']} | {row['frames']} | {row['dropped']} | {row['events']} | "
                f"{decisions.get('granted', 0)} | {decisions.get('unknown', 0)} | {decisions.get('denied', 0)} |"
            )
        if len(rows) > 1:
            total = sum(row["fps"] or 0.0 for row in rows)
            print(
                f"| {count} | all | {total:.2f} | {sum(row['frames'] for row in rows)} | | "
                f"{sum(row['events'] for row in rows)} | | | |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of each run")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument(
        "--cameras",
        type=int,
        nargs="+",
        choices=(1, 2),
        default=[1],
        help="video cameras of the daemon (1 or 2); '1 2' runs both, one after the other",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the appliance's configuration file: its [models] and [backend] (TensorRT on a Jetson, "
        "after `face-appliance engines build`) instead of the CPU back-end on shared/models",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=SHARED / "data", help="the photos (default: shared/data)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    appliance = None
    if args.config is not None:
        from appliance.errors import ConfigError

        try:
            appliance = appliance_tables(args.config)
        except ConfigError as err:
            parser.error(str(err))
    machine = describe()
    reports: Dict[int, Dict[str, Any]] = {}
    for count in dict.fromkeys(args.cameras):
        with tempfile.TemporaryDirectory(prefix="bench-daemon-") as folder:
            reports[count] = run(args.minutes, args.sample_s, Path(folder), count, appliance, args.data_dir)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    for count, report in reports.items():
        if len(reports) > 1:
            print(f"\n## {count} camera{'s' if count > 1 else ''}")
        _print_report(report, args.minutes)
    _print_cameras(reports)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        if len(reports) == 1:
            document: Dict[str, Any] = {"machine": machine, **next(iter(reports.values()))}
        else:
            document = {"machine": machine, "runs": {str(count): report for count, report in reports.items()}}
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
