"""IANA time zones: ``zoneinfo`` (Python ≥ 3.9) or its backport ``backports.zoneinfo`` on 3.8 (JetPack 5).

The zone data come from the system (``/usr/share/zoneinfo``, Debian's ``tzdata``) or, where the
system has none (a slim container), from the PyPI ``tzdata`` package.
"""

from __future__ import annotations

import sys
from datetime import tzinfo

from .errors import PolicyError

if sys.version_info >= (3, 9):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
else:  # pragma: no cover - Python 3.8
    from backports.zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def load_zone(name: str) -> tzinfo:
    """The zone named ``name`` (e.g. ``Europe/Berlin``, ``UTC``).

    Raises:
        PolicyError: not a known IANA zone name (or the zone data are missing).
    """
    if not isinstance(name, str) or not name or len(name) > 64 or ".." in name or name.startswith("/"):
        raise PolicyError(f"time zone {name!r:.80} is not an IANA zone name (e.g. Europe/Berlin, UTC)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PolicyError(
            f"time zone {name!r} is unknown (an IANA name such as Europe/Berlin or America/New_York; "
            f"install the system's tzdata or `pip install tzdata` if none is known)"
        ) from None


__all__ = ["load_zone"]
