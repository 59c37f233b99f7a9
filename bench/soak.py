"""Soak: the daemon on a looping video at full speed for a long run, with a leak verdict per resource.

    python -m bench.soak [--minutes 20] [--sample-s 30] [--json OUT]

The measurement is :func:`bench.daemon.run` (a real Mosquitto, one enrolled person, a looping video in
which that person and a stranger keep walking up, ``face-appliance run`` as a subprocess): resident
memory, threads, open file descriptors and outbox depth are sampled every ``--sample-s`` seconds.
Printed: every sample, then per resource its first, last and largest value, its growth per hour
(least squares over the second half of the run, after warm-up) and a verdict
(:func:`bench.daemon.leak_report`: ``flat`` or ``growing``). The exit status is 1 when anything grows.
``tests/integration/test_soak.py`` is the one-minute version that CI runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

from .daemon import run
from .machine import describe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the run (default 20)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        report = run(args.minutes, args.sample_s, Path(folder))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    state = report["daemon_state"]
    print(
        f"soak: {args.minutes:g} min at {state.get('fps')} fps, {state.get('frames')} frames, "
        f"{report['events']} events {report['decisions']}, start → READY {report['ready_s']} s"
    )
    print("\n| t (s) | RSS (MiB) | threads | fds | outbox |\n| ---: | ---: | ---: | ---: | ---: |")
    for sample in report["samples"]:
        print(
            f"| {sample['t']:.0f} | {sample.get('rss_mib', float('nan')):.1f} | {sample.get('threads', 0):.0f} "
            f"| {sample.get('fds', 0):.0f} | {sample.get('outbox', 0):.0f} |"
        )
    print(
        "\n| resource | first | last | max | growth per hour (second half) | verdict |"
        "\n| --- | ---: | ---: | ---: | ---: | --- |"
    )
    for name, figures in report["leaks"].items():
        growth = figures["growth_per_hour"]
        shown = "n/a" if growth is None else f"{growth:+.2f} {figures['unit']}".rstrip()
        print(
            f"| {name} | {figures['first']} | {figures['last']} | {figures['max']} | {shown} | {figures['verdict']} |"
        )
    outbox = state.get("outbox") or {}
    print(
        f"\noutbox at the end: depth {outbox.get('depth')}, put {outbox.get('put_total')}, "
        f"acknowledged {outbox.get('acked_total')}, dropped {outbox.get('dropped_overflow', 0) + outbox.get('dropped_age', 0)}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **report}, indent=2))
    growing = [name for name, figures in report["leaks"].items() if figures["verdict"] == "growing"]
    if growing:
        print(f"\nGROWING: {', '.join(growing)}")
        return 1
    print("\nno leak: every resource flat")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
