"""The board's health on a Jetson: temperatures, GPU load, power mode, locked clocks and throttling.

Everything is read from sysfs and a few files nvpmodel keeps, under a configurable root (``/`` on a
device; a recorded tree in ``tests/data/board_health/`` in the tests). Each file is tiny and read
bounded (:func:`engines.files.read_bounded`); a file that is missing, unreadable or holds something
unexpected gives ``None`` for its value, never an exception. Off a Jetson (no
``/etc/nv_tegra_release``) the document is ``{"jetson": False}`` after one ``stat``.

What is read, and where the layout comes from:

* **Temperatures**: ``/sys/class/thermal/thermal_zone*/type`` and ``temp`` (millidegrees Celsius),
  the kernel's thermal sysfs ABI (``drivers/thermal/thermal_sysfs.c``; read in
  OE4T/linux-tegra-5.10). The zone names differ per board: Xavier NX/AGX (L4T R32/R35) ``CPU-therm``,
  ``GPU-therm``, ``AUX-therm``, ``AO-therm``, ``PMIC-Die``, ``Tboard_tegra``, ``Tdiode_tegra``,
  ``thermal-fan-est``; Orin (L4T R35/R36) ``cpu-thermal``, ``gpu-thermal``, ``cv0-thermal`` …
  ``cv2-thermal``, ``soc0-thermal`` … ``soc2-thermal``, ``tj-thermal`` (the zone list of the upstream
  patch "arm64: tegra: Add thermal support for Tegra234", linux-tegra list, January 2023, and
  recorded ``/sys/class/thermal`` listings in public Jetson repositories). ``PMIC-Die`` is left out:
  it reads a fixed 100 °C (balena-os/balena-jetson issue 142, citing NVIDIA's forum; jetson-stats'
  ``jtop/core/temperature.py`` skips it too). A ``temp`` that cannot be read (the ``cv*`` zones of
  an Orin Nano, which has no CV cluster, fail with an I/O error) or is out of range (a sensor that
  is off reads -256 °C in jetson-stats' experience) gives ``None``.
* **Throttling**: a zone whose temperature has reached one of its trip points of type ``passive``
  or ``hot`` (``trip_point_<n>_temp`` / ``trip_point_<n>_type``, same ABI; Orin's device tree has
  a ``passive`` "sw-throttle" trip at 99 °C and a ``critical`` "sw-shutdown" at 104.5 °C per zone
  in the upstream patch above), or an over-current event since the previous sample: the
  ``soctherm_oc`` hwmon device counts them, ``oc<n>_event_cnt`` on Orin
  (``drivers/thermal/tegra23x_oc_event.c``) and ``oc<n>_irq_cnt`` on Xavier
  (``drivers/thermal/tegra19x_oc_event.c``, both in OE4T/linux-tegra-5.10). ``active`` trips (the
  fan) and ``critical`` trips (shutdown) are not throttling.
* **GPU load**: the GPU device's ``load`` file, per mille (0–1000; jetson-stats
  ``jtop/core/gpu.py`` divides it by 10). The device is found as jetson-stats does, through the
  ``/sys/class/devfreq`` entry whose name ends in a Tegra GPU name (``gv11b`` Xavier, ``ga10b``
  Orin on L4T R35, ``gpu`` Nano and Orin on R36) and its ``device`` link, then at the paths public
  Jetson tools read: ``/sys/devices/gpu.0/load`` (L4T R32/R35),
  ``/sys/devices/platform/17000000.ga10b/load`` (Orin, R35),
  ``/sys/devices/platform/bus@0/17000000.gpu/load`` (Orin, R36).
* **Power mode**: ``/var/lib/nvpmodel/status`` holds ``pmode:0002`` (``fmode:…`` may follow), the
  mode nvpmodel last applied; its name is the ``< POWER_MODEL ID=<n> NAME=<name> >`` header in
  ``/etc/nvpmodel.conf`` (the file format NVIDIA's ``jetson-customize-nvpmodel`` skill documents;
  jetson-stats parses ``nvpmodel -p --verbose`` output of the same headers).
* **Clocks locked** (``jetson_clocks``): every online CPU's ``cpufreq/scaling_min_freq`` equals its
  ``scaling_max_freq`` and the GPU devfreq ``min_freq`` equals ``max_freq``, the test jetson-stats
  applies (``jtop/core/jetson_clocks.py``, ``jetson_clocks_alive``); ``None`` when a value is missing.

:class:`BoardMonitor` caches one sample for a few seconds (``…/state``, the Prometheus endpoint and
the ``status`` command all ask) and reports the start and the end of throttling as door events
(``source`` ``board``, ``kind`` ``board_throttling`` / ``board_throttling_ended``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from engines.errors import FileReadError
from engines.files import read_bounded

logger = logging.getLogger(__name__)

#: Seconds a sample is reused before sysfs is read again.
SAMPLE_INTERVAL_S = 5.0
#: A sysfs attribute is at most one page; nvpmodel's status is one line.
SYSFS_MAX_BYTES = 4096
#: ``/etc/nvpmodel.conf`` is tens of KiB on an Orin.
NVPMODEL_CONF_MAX_BYTES = 256 * 1024
#: At most this many entries of a listed directory are looked at (a board has about ten zones).
MAX_ENTRIES = 256
#: At most this many trip points per zone.
MAX_TRIPS = 32
#: Temperatures outside this range (°C) are a sensor that is off or a bad read.
TEMPERATURE_RANGE_C = (-60.0, 200.0)

#: Zones left out: ``PMIC-Die`` reads a fixed 100 °C on Xavier (see the module docstring).
IGNORED_ZONES = frozenset({"PMIC-Die"})
#: Trip types that mean the kernel slows the chip down.
THROTTLE_TRIPS = frozenset({"passive", "hot"})
#: Suffixes of ``/sys/class/devfreq`` entries that are the integrated GPU (jetson-stats' names).
GPU_DEVFREQ_SUFFIXES = ("gv11b", "ga10b", "gp10b", "gb10b", "gpu")
#: Where public Jetson tools read the GPU load, relative to the root (see the module docstring).
GPU_LOAD_PATHS = (
    "sys/devices/gpu.0/load",
    "sys/devices/platform/17000000.ga10b/load",
    "sys/devices/platform/bus@0/17000000.gpu/load",
    "sys/devices/17000000.gv11b/load",
    "sys/devices/platform/17000000.gv11b/load",
    "sys/devices/57000000.gpu/load",
)

_ZONE = re.compile(r"thermal_zone(\d+)$")
_TRIP = re.compile(r"trip_point_(\d+)_type$")
_CPU = re.compile(r"cpu(\d+)$")
_OC_COUNTER = re.compile(r"(oc\d+)_(?:event|irq)_cnt$")
_PMODE = re.compile(r"pmode:\s*(\d+)")
_POWER_MODEL = re.compile(r"^<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>", re.MULTILINE)

#: ``emit(kind, details)``: store and publish one event (the door hub's emitter); never raises.
EmitEvent = Callable[[str, Mapping[str, Any]], None]
PathLike = Union[str, "os.PathLike[str]"]


class BoardHealthReader:
    """Reads one sample of the board's health from sysfs under ``root``; never raises.

    Args:
        root: the file system root (``/``; a recorded tree in tests).
    """

    def __init__(self, root: PathLike = "/") -> None:
        self.root = Path(root)
        self._oc_counts: Optional[Dict[str, int]] = None

    # -- reading helpers ------------------------------------------------------------------------

    def _path(self, relative: str) -> Path:
        return self.root / relative

    def _text(self, path: Path, max_bytes: int = SYSFS_MAX_BYTES) -> Optional[str]:
        """The file's text stripped, or ``None`` (missing, unreadable, too large, not text)."""
        try:
            return read_bounded(path, max_bytes).decode("utf-8").strip()
        except (FileReadError, OSError, UnicodeDecodeError, ValueError):
            return None

    def _int(self, path: Path) -> Optional[int]:
        text = self._text(path)
        if not text:
            return None
        try:
            return int(text.split()[0])
        except ValueError:
            return None

    def _count(self, path: Path) -> Optional[int]:
        """A frequency, counter or flag: a non-negative integer, else ``None``."""
        value = self._int(path)
        return value if value is not None and value >= 0 else None

    def _entries(self, directory: Path) -> List[str]:
        """Names in a directory (sorted, at most :data:`MAX_ENTRIES`), or none."""
        try:
            with os.scandir(directory) as scan:
                names = []
                for entry in scan:
                    names.append(entry.name)
                    if len(names) >= MAX_ENTRIES:
                        break
        except OSError:
            return []
        return sorted(names)

    # -- the parts ------------------------------------------------------------------------------

    def is_jetson(self) -> bool:
        """Whether the root holds ``etc/nv_tegra_release`` (L4T's release file)."""
        try:
            return (self.root / "etc" / "nv_tegra_release").exists()
        except OSError:
            return False

    def thermal_zones(self) -> List[Dict[str, Any]]:
        """Each zone: ``{"zone": name, "temp_c": float | None, "trips": [(type, °C), …]}``."""
        zones: List[Dict[str, Any]] = []
        seen: Dict[str, int] = {}
        numbered = []
        for name in self._entries(self._path("sys/class/thermal")):
            match = _ZONE.match(name)
            if match:
                numbered.append((int(match.group(1)), name))
        for _, directory in sorted(numbered):
            base = self._path("sys/class/thermal") / directory
            kind = self._text(base / "type")
            if not kind or kind in IGNORED_ZONES:
                continue
            if kind in seen:  # two zones of one name: the later ones get their directory's name
                kind = f"{kind}@{directory}"
            seen[kind] = 1
            zones.append({"zone": kind, "temp_c": self._celsius(base / "temp"), "trips": self._trips(base)})
        return zones

    def _celsius(self, path: Path) -> Optional[float]:
        millidegrees = self._int(path)
        if millidegrees is None:
            return None
        celsius = millidegrees / 1000.0
        low, high = TEMPERATURE_RANGE_C
        return round(celsius, 3) if low <= celsius <= high else None

    def _trips(self, zone: Path) -> List[Tuple[str, float]]:
        trips: List[Tuple[str, float]] = []
        for name in self._entries(zone):
            match = _TRIP.match(name)
            if not match or len(trips) >= MAX_TRIPS:
                continue
            kind = self._text(zone / name)
            temp = self._celsius(zone / f"trip_point_{match.group(1)}_temp")
            if kind and temp is not None:
                trips.append((kind, temp))
        return trips

    def gpu_devfreq(self) -> Optional[Path]:
        """The GPU's ``/sys/class/devfreq`` entry, or ``None``."""
        for name in self._entries(self._path("sys/class/devfreq")):
            if name.rsplit(".", 1)[-1] in GPU_DEVFREQ_SUFFIXES:
                return self._path("sys/class/devfreq") / name
        return None

    def gpu_load_pct(self, devfreq: Optional[Path]) -> Optional[float]:
        """The GPU load in percent (0–100), or ``None``."""
        candidates: List[Path] = []
        if devfreq is not None:
            device = devfreq / "device"
            try:
                if device.exists():
                    candidates.append(Path(os.path.realpath(device)) / "load")
            except OSError:
                pass
        candidates.extend(self._path(relative) for relative in GPU_LOAD_PATHS)
        for path in candidates:
            per_mille = self._count(path)
            if per_mille is not None:
                return round(per_mille / 10.0, 1) if 0 <= per_mille <= 1000 else None
        return None

    def power_mode(self) -> Optional[Dict[str, Any]]:
        """``{"id": int, "name": str | None}`` from nvpmodel's status and configuration, or ``None``."""
        status = self._text(self._path("var/lib/nvpmodel/status"))
        match = _PMODE.search(status or "")
        if match is None:
            return None
        mode = int(match.group(1))
        conf = self._text(self._path("etc/nvpmodel.conf"), NVPMODEL_CONF_MAX_BYTES) or ""
        names = {int(number): name for number, name in _POWER_MODEL.findall(conf)}
        return {"id": mode, "name": names.get(mode)}

    def clocks_locked(self, devfreq: Optional[Path]) -> Optional[bool]:
        """Whether ``jetson_clocks`` holds the clocks at their maximum; ``None`` when unknown."""
        cpus = [name for name in self._entries(self._path("sys/devices/system/cpu")) if _CPU.match(name)]
        if not cpus or devfreq is None:
            return None
        locked = True
        for name in cpus:
            base = self._path("sys/devices/system/cpu") / name
            online = self._count(base / "online")
            if online == 0:
                continue  # an offline core has no frequency; cpu0 has no "online" file and is online
            low = self._count(base / "cpufreq" / "scaling_min_freq")
            high = self._count(base / "cpufreq" / "scaling_max_freq")
            if low is None or high is None:
                return None
            locked = locked and low == high
        low, high = self._count(devfreq / "min_freq"), self._count(devfreq / "max_freq")
        if low is None or high is None:
            return None
        return locked and low == high

    def overcurrent_counts(self) -> Dict[str, int]:
        """The ``soctherm_oc`` hwmon counters (``{"oc1": n, …}``, cumulative since boot)."""
        for name in self._entries(self._path("sys/class/hwmon")):
            base = self._path("sys/class/hwmon") / name
            if self._text(base / "name") != "soctherm_oc":
                continue
            counts: Dict[str, int] = {}
            for entry in self._entries(base):
                match = _OC_COUNTER.match(entry)
                value = self._count(base / entry) if match else None
                if match and value is not None:
                    counts[match.group(1)] = value
            return counts
        return {}

    # -- one sample -----------------------------------------------------------------------------

    def read(self) -> Dict[str, Any]:
        """The ``board`` document of ``…/state``; ``{"jetson": False}`` off a Jetson; never raises."""
        try:
            if not self.is_jetson():
                return {"jetson": False}
            return self._read()
        except Exception as err:  # a reader bug must not end the supervisor or the metrics thread
            logger.warning("reading the board's health failed: %s", err)
            logger.debug("board health", exc_info=True)
            return {"jetson": True, "error": str(err)}

    def _read(self) -> Dict[str, Any]:
        zones = self.thermal_zones()
        hot = []
        for zone in zones:
            temp = zone["temp_c"]
            reached = [trip for trip in zone["trips"] if trip[0] in THROTTLE_TRIPS and temp is not None]
            reached = [trip for trip in reached if temp >= trip[1]]
            if reached:
                kind, trip_c = max(reached, key=lambda trip: trip[1])  # the most severe reached
                hot.append({"zone": zone["zone"], "temp_c": temp, "trip_c": trip_c, "trip": kind})
        counts = self.overcurrent_counts()
        previous, self._oc_counts = self._oc_counts, counts
        overcurrent = previous is not None and any(
            value > previous.get(name, value) for name, value in counts.items()
        )
        devfreq = self.gpu_devfreq()
        return {
            "jetson": True,
            "temperatures_c": {zone["zone"]: zone["temp_c"] for zone in zones},
            "gpu_load_pct": self.gpu_load_pct(devfreq),
            "power_mode": self.power_mode(),
            "clocks_locked": self.clocks_locked(devfreq),
            "throttling": bool(hot) or overcurrent,
            "throttling_zones": hot,
            "overcurrent": overcurrent,
            "overcurrent_events": counts,
        }


class BoardMonitor:
    """One cached sample of :class:`BoardHealthReader`, shared by every thread that asks, and an
    event when throttling starts or ends.

    Args:
        reader: reads the board (default: the real one, root ``/``).
        interval_s: a sample is reused for this long.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        reader: Optional[BoardHealthReader] = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader if reader is not None else BoardHealthReader()
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sample: Optional[Dict[str, Any]] = None
        self._taken = 0.0
        self._throttling = False
        self._emit: Optional[EmitEvent] = None

    def attach(self, emit: EmitEvent) -> None:
        """Report throttling through ``emit`` (the door hub's emitter for source ``board``)."""
        self._emit = emit

    def document(self) -> Dict[str, Any]:
        """The ``board`` document (a copy); read again when the cached one is older than the
        interval. Never raises."""
        pending: Optional[Tuple[str, Dict[str, Any]]] = None
        with self._lock:
            now = self._clock()
            if self._sample is None or now - self._taken >= self.interval_s:
                self._sample = self.reader.read()
                self._taken = now
                pending = self._transition(self._sample)
            sample = dict(self._sample)
        if pending is not None:
            self._report(*pending)
        return sample

    def _transition(self, sample: Mapping[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
        throttling = bool(sample.get("throttling"))
        if throttling == self._throttling:
            return None
        self._throttling = throttling
        details = {
            "zones": sample.get("throttling_zones", []),
            "temperatures_c": sample.get("temperatures_c", {}),
            "overcurrent": bool(sample.get("overcurrent")),
        }
        if throttling:
            logger.warning(
                "the board is throttling: %s",
                ", ".join(f"{z['zone']} {z['temp_c']} °C ≥ {z['trip_c']} °C" for z in details["zones"])
                or "over-current",
            )
            return "board_throttling", details
        logger.info("the board no longer throttles")
        return "board_throttling_ended", details

    def _report(self, kind: str, details: Dict[str, Any]) -> None:
        emit = self._emit
        if emit is None:
            return
        try:
            emit(kind, details)
        except Exception:  # the emitter never raises by contract; a bug there must not end the caller
            logger.exception("reporting %s failed", kind)


__all__ = ["SAMPLE_INTERVAL_S", "BoardHealthReader", "BoardMonitor", "EmitEvent"]
