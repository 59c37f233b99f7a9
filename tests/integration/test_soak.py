"""A short soak in CI: the daemon on a looping video at full speed for a minute, resources sampled.

The measurement is the bench's (:func:`bench.daemon.run`; ``python -m bench.soak --minutes 20`` is the
long run). Asserted here are bounds, not speeds: after warm-up the number of threads and of open file
descriptors does not grow, resident memory grows by less than :data:`RSS_GROWTH_LIMIT_MIB`, and the
outbox keeps draining (events are delivered as fast as they are made). ``SOAK_MINUTES`` lengthens it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.daemon import leak_report, run

MINUTES = float(os.environ.get("SOAK_MINUTES", "1.0"))
SAMPLE_S = 2.0
#: Largest growth of resident memory after the first quarter of the run (allocator and cache noise).
RSS_GROWTH_LIMIT_MIB = 40.0


def test_no_unbounded_growth_in_a_short_soak(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    report = run(MINUTES, SAMPLE_S, tmp_path)
    samples = report["samples"]
    assert report["ready_s"] is not None, "the daemon never reported READY"
    assert len(samples) >= 10 and report["events"] >= 4, report
    warm = samples[len(samples) // 4 :]  # after warm-up (models, caches, first events)
    half = len(warm) // 2
    threads = [s["threads"] for s in warm]
    assert max(threads[half:]) <= max(threads[:half]), f"threads grew: {[s['threads'] for s in samples]}"
    # libsystemd's sd_notify opens a socket for each notification and closes it at once: a sample may
    # catch one. A leak keeps its descriptors, so even the fewest of the second half exceed the first.
    fds = [s["fds"] for s in warm]
    assert min(fds[half:]) <= max(fds[:half]), f"fds grew: {[s['fds'] for s in samples]}"
    rss = [s["rss_mib"] for s in warm]
    assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_MIB, f"resident memory grew: {[round(v) for v in rss]} MiB"
    outbox = [s.get("outbox", 0.0) for s in warm]
    assert max(outbox[half:]) <= max(10.0, *outbox[:half]), f"the outbox backs up: {outbox}"
    assert leak_report(samples)["threads"]["verdict"] == "flat"
