"""The containers' health check: the daemon answers on its Prometheus endpoint and reports ready.

The images run it as their ``HEALTHCHECK`` (docker/Dockerfile.*): exit 0 healthy, 1 unhealthy, and one
line that ``docker inspect`` shows. Healthy means ``face_appliance_ready 1`` on
``http://127.0.0.1:{metrics.prometheus_port}/metrics``: models loaded and frames flowing, the same
moment the daemon tells systemd READY=1. It reads only the ``[metrics]`` section of the configuration
(``$FACE_APPLIANCE_CONFIG``), with the standard library, so it costs a few milliseconds every 30 s.

With ``metrics.prometheus = false`` there is no endpoint to ask: the check then passes and says so
(the container is up; Docker restarts it when the daemon exits). docker/appliance.toml turns it on.
``face-appliance doctor`` is not the health check: it opens the camera and the GPIO lines the running
daemon holds, and loads the models.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from typing import Optional

try:
    import tomllib  # novermin
except ImportError:  # Python < 3.11: tomli is a dependency of face-appliance there
    import tomli as tomllib

DEFAULT_CONFIG = "/etc/face-appliance/appliance.toml"
DEFAULT_PORT = 9108
READY = "face_appliance_ready"
MAX_BODY = 1 << 20


def _report(status: int, message: str) -> int:
    (sys.stdout if status == 0 else sys.stderr).write(f"health: {message}\n")
    return status


def ready_value(body: str) -> Optional[float]:
    """The value of the ``face_appliance_ready`` gauge in a Prometheus text page, or ``None``."""
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name == READY:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def main() -> int:
    path = os.environ.get("FACE_APPLIANCE_CONFIG", DEFAULT_CONFIG)
    try:
        with open(path, "rb") as file:
            config = tomllib.load(file)
    except (OSError, ValueError) as err:
        return _report(1, f"cannot read the configuration {path}: {err}")
    metrics = config.get("metrics", {})
    if not metrics.get("prometheus", False):
        return _report(0, "metrics.prometheus is off, no endpoint to ask; the process is up")
    url = f"http://127.0.0.1:{int(metrics.get('prometheus_port', DEFAULT_PORT))}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read(MAX_BODY).decode("utf-8", "replace")
    except (OSError, ValueError) as err:
        return _report(1, f"{url}: {err}")
    value = ready_value(body)
    if value is None:
        return _report(1, f"{url} has no {READY}")
    if value != 1:
        return _report(1, "not ready (starting: loading models or building engines, or no frames)")
    return _report(0, "ready")


if __name__ == "__main__":
    sys.exit(main())
