"""The OSDP reader's error: what the configuration or the machine gets wrong, worded to act on."""

from __future__ import annotations

from ..errors import ApplianceError


class OsdpError(ApplianceError):
    """The OSDP reader cannot start: libosdp missing, the serial port or the key file unusable.

    Example scenarios: ``osdp.port`` names a device that does not exist or that another process
    holds; ``osdp.scbk_file`` is missing or not 32 hex digits; ``libosdp`` is not installed.
    The message names the configuration key and what to try.
    """


__all__ = ["OsdpError"]
