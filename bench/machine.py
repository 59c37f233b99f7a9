"""What machine a benchmark ran on, so that figures are never quoted without it."""

from __future__ import annotations

import os
import platform
from typing import Dict


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> Dict[str, str]:
    """CPU, core count, memory, OS, Python and the runtimes' versions."""
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        with open("/proc/meminfo", encoding="utf-8") as stream:
            total_kb = int(stream.readline().split()[1])
        info["memory"] = f"{total_kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    for module in ("onnxruntime", "cv2", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = "absent"
    return info


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
