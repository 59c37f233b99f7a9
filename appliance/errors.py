"""Errors raised by :mod:`appliance`, grouped by phase.

::

    FaceApplianceError (engines.errors)  the project's one root
     +-- EngineError (engines.errors)     models, back-ends, TensorRT engines, calibration
     +-- ApplianceError
          +-- ConfigError     the configuration file is missing, not TOML, or invalid (all issues listed)
          +-- CameraError     a camera source cannot be opened or read (appliance.camera)
          +-- ImageError      an image that cannot be decoded or is too large (appliance.vision.image)
          +-- GalleryError    the template store, its key, index or bundles (appliance.gallery.errors)
          +-- OutboxError     the durable event outbox (appliance.outbox)
          +-- MqttLinkError   the broker connection's settings (appliance.mqtt_link)
          +-- CommandError    a remote command that is refused (appliance.commands)
          +-- UpdateError     model packages, CAN transfers, the model swap (appliance.updates.errors)
          +-- PolicyError     the access policy: dates, schedules, groups (appliance.access.errors)
          +-- DoorError       the door's GPIO lines (appliance.door.errors)
          +-- OsdpError       the OSDP reader and its serial port (appliance.osdp.errors)
          +-- FleetError      fleet records, keys and the authority (appliance.fleet.errors)

"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from engines.errors import FaceApplianceError

if TYPE_CHECKING:
    from .config_load import ConfigIssue


class ApplianceError(FaceApplianceError):
    """Base class of the appliance's own errors (the sibling of :class:`engines.errors.EngineError`)."""


class ConfigError(ApplianceError):
    """A configuration that cannot be used.

    Attributes:
        path: the file, when the configuration came from one.
        issues: every problem found, each with its key path.
    """

    def __init__(self, path: Optional[Path], issues: Sequence[ConfigIssue]) -> None:
        self.path = path
        self.issues = list(issues)
        where = f"{path}" if path else "configuration"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{where}: {len(self.issues)} problem(s)\n{lines}")
