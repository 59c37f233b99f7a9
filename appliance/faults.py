"""Fault injection for tests: ``FACE_APPLIANCE_FAULTS`` turns on failures a test cannot cause from outside.

The variable holds comma-separated ``name:value`` items; unset (always, in production) it does
nothing. Known faults:

* ``stall_pipeline_after:N`` — after N processed frames the pipeline thread blocks (as a model call
  that never returns would) until the daemon is told to stop: the systemd watchdog must notice.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional

logger = logging.getLogger(__name__)

ENVIRONMENT = "FACE_APPLIANCE_FAULTS"


@dataclass(frozen=True)
class Faults:
    """The injected faults of this process (none unless the environment asks)."""

    stall_pipeline_after: Optional[int] = None

    @classmethod
    def from_environment(cls) -> Faults:
        spec = os.environ.get(ENVIRONMENT, "").strip()
        if not spec:
            return cls()
        items: Dict[str, str] = {}
        for part in spec.split(","):
            name, _, value = part.partition(":")
            items[name.strip()] = value.strip()
        logger.warning("fault injection is on: %s", spec)
        stall = items.get("stall_pipeline_after")
        return cls(stall_pipeline_after=int(stall) if stall else None)

    def maybe_stall(self, frames_processed: int, stop: threading.Event) -> None:
        """Block the calling thread until ``stop`` when the stall fault is due."""
        if self.stall_pipeline_after is not None and frames_processed >= self.stall_pipeline_after:
            logger.warning("fault injection: the pipeline stalls now")
            stop.wait()
