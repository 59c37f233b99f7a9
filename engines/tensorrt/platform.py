"""The device TensorRT runs on: one probe, one reader of the L4T release, one "is TensorRT usable" check.

Nothing here imports ``tensorrt`` or ``pycuda`` at import time, so the CLI, ``doctor`` and the engine
cache use it on any machine; :func:`probe_platform` and :func:`tensorrt_unavailable` import them
when called.

* :class:`PlatformInfo` — what an engine is bound to: TensorRT version, GPU name and compute
  capability, and the L4T release on a Jetson.
* :func:`read_l4t_version` / :func:`jetson_release_line` — the only readers of
  ``/etc/nv_tegra_release``; :func:`is_jetson`, :func:`l4t_major`.
* :func:`jetpack4_pieces` — on JetPack 4 (a Nano), which of TensorRT's bindings, pycuda and
  ``libnvinfer.so.8`` this interpreter lacks.
* :func:`probe_platform` — the running TensorRT and CUDA device.
* :func:`tensorrt_unavailable` — why TensorRT engines cannot be built or run here, or ``None``.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import EngineBuildError
from ..files import PathLike

logger = logging.getLogger(__name__)

#: Where L4T (the Jetson Linux BSP underneath JetPack) records its release.
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
#: At most this much of the release file is read (it is one line).
RELEASE_FILE_MAX_BYTES = 4096
#: JetPack 4's L4T major release (the last for the Nano: Python 3.6, TensorRT 8.2).
L4T_JETPACK4 = 32
#: Where JetPack installs TensorRT's libraries.
L4T_LIBRARY_DIR = Path("/usr/lib/aarch64-linux-gnu")
#: The TensorRT 8 runtime library the bindings load.
LIBNVINFER = "libnvinfer.so.8"

_RELEASE_PATTERN = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
#: Characters not allowed in file names derived from platform or model names.
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PlatformInfo:
    """What an engine is tied to: the TensorRT version and the GPU, plus the L4T release on a Jetson.

    ``l4t_version`` is read from ``/etc/nv_tegra_release`` (``"35.4.1"``), ``None`` off a Jetson.
    JetPack releases are named after their L4T release in NVIDIA's JetPack archive; the L4T version
    is what the device itself records, so that is what the manifest keeps.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]
    l4t_version: Optional[str] = None

    @property
    def tensorrt_major(self) -> int:
        """The major TensorRT version (8, 10, …); 0 when the version string is not numeric."""
        head = self.tensorrt_version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def sm(self) -> str:
        """``SM 8.7``."""
        return f"SM {self.compute_capability[0]}.{self.compute_capability[1]}"

    def describe(self) -> str:
        """``TensorRT 8.5.2.2 on Orin (SM 8.7), L4T 35.4.1``."""
        text = f"TensorRT {self.tensorrt_version} on {self.gpu_name} ({self.sm})"
        return f"{text}, L4T {self.l4t_version}" if self.l4t_version else text

    def slug(self) -> str:
        """A file-name-safe tag for files tied to this TensorRT and GPU (the timing cache)."""
        major, minor = self.compute_capability
        gpu = SAFE_NAME.sub("-", self.gpu_name).strip("-").lower() or "gpu"
        return f"trt{self.tensorrt_version}-{gpu}-sm{major}{minor}"


# -- L4T --------------------------------------------------------------------------------


def parse_l4t_release(text: str) -> Optional[str]:
    """The L4T version in ``/etc/nv_tegra_release`` text, e.g. ``"# R35 (release), REVISION: 4.1, …"``
    gives ``"35.4.1"``; ``None`` when the text does not have that form."""
    match = _RELEASE_PATTERN.search(text)
    if match is None:
        return None
    return f"{match.group(1)}.{match.group(2)}"


def _release_text(path: Optional[PathLike]) -> Optional[str]:
    """The first :data:`RELEASE_FILE_MAX_BYTES` of the release file (default :data:`NV_TEGRA_RELEASE`, looked
    up at call time so tests can point it elsewhere), or ``None`` when it is absent,
    unreadable or not a regular file (a FIFO or device there must not hang or flood a reader)."""
    candidate = Path(path) if path is not None else NV_TEGRA_RELEASE
    try:
        if not candidate.is_file():
            return None
        with candidate.open("rb") as stream:
            return stream.read(RELEASE_FILE_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None


def read_l4t_version(path: Optional[PathLike] = None) -> Optional[str]:
    """The L4T release of this Jetson (``"35.4.1"``), or ``None`` when the file is absent or unreadable
    (not a Jetson)."""
    text = _release_text(path)
    if text is None:
        return None
    version = parse_l4t_release(text)
    if version is None:
        logger.warning(
            "%s does not have the expected '# R<major> (release), REVISION: …' form", path or NV_TEGRA_RELEASE
        )
    return version


def jetson_release_line(path: Optional[PathLike] = None) -> Optional[str]:
    """The release file's first line without its ``#`` (``"R35 (release), REVISION: 4.1, …"``), for
    ``doctor``; ``None`` off a Jetson."""
    text = _release_text(path)
    if text is None:
        return None
    return text.splitlines()[0].strip().lstrip("# ") if text.strip() else None


def l4t_major(path: Optional[PathLike] = None) -> Optional[int]:
    """The L4T major release (32 for JetPack 4, 35 for JetPack 5, 36 for JetPack 6), or ``None``."""
    version = read_l4t_version(path)
    return int(version.split(".", 1)[0]) if version else None


def jetpack4_pieces(library_dir: Optional[PathLike] = None) -> Dict[str, Optional[str]]:
    """What the TensorRT back-end needs on JetPack 4 (L4T R32: a Nano) that JetPack does not give a
    Python 3.8 interpreter: ``{piece: None when present, else why not}`` for ``tensorrt`` and
    ``pycuda`` importable here, and ``libnvinfer.so.8`` in ``library_dir`` (default
    :data:`L4T_LIBRARY_DIR`, looked up at call time so tests can point it elsewhere).

    JetPack 4.6 ships TensorRT's bindings and pycuda for Python 3.6 only;
    ``scripts/nano-tensorrt-py38.sh`` builds both for 3.8.
    """
    pieces: Dict[str, Optional[str]] = {}
    for module in ("tensorrt", "pycuda.driver"):
        try:
            importlib.import_module(module)
            pieces[module.split(".")[0]] = None
        except Exception as err:  # ImportError, or OSError for a library the module loads
            pieces[module.split(".")[0]] = f"{type(err).__name__}: {err}"
    directory = Path(library_dir) if library_dir is not None else L4T_LIBRARY_DIR
    library = directory / LIBNVINFER
    pieces[LIBNVINFER] = None if library.exists() else f"not in {directory}"
    return pieces


def is_jetson(path: Optional[PathLike] = None) -> bool:
    """Whether this machine is an NVIDIA Jetson (it has ``/etc/nv_tegra_release``)."""
    return (Path(path) if path is not None else NV_TEGRA_RELEASE).exists()


def probe_platform(device: int = 0) -> PlatformInfo:
    """The running TensorRT version and CUDA device ``device`` (name, compute capability), plus L4T.

    Raises:
        EngineBuildError: TensorRT or pycuda is missing, or the device cannot be queried.
    """
    try:
        import tensorrt as trt
    except Exception as err:  # ImportError, or OSError for a missing libnvinfer
        raise EngineBuildError(f"TensorRT cannot be imported: {type(err).__name__}: {err}") from err
    try:
        import pycuda.driver as cuda
    except Exception as err:
        raise EngineBuildError(f"pycuda is needed to identify the GPU: {err}") from err
    try:
        cuda.init()
        handle = cuda.Device(device)
        name = str(handle.name())
        major, minor = handle.compute_capability()
    except cuda.Error as err:
        raise EngineBuildError(f"CUDA device {device} cannot be queried: {err}") from err
    return PlatformInfo(str(trt.__version__), name, (int(major), int(minor)), read_l4t_version())


def tensorrt_unavailable() -> Optional[str]:
    """Why TensorRT engines cannot be built or run here, or ``None`` when they can.

    The one check the CLI, ``doctor`` and the daemon share: the project's TensorRT modules import
    (``tensorrt`` and ``pycuda`` with them), and CUDA has a device.
    """
    try:
        import engines.tensorrt.backend  # noqa: F401 - imports tensorrt, pycuda and the builder
    except Exception as err:  # ImportError, or OSError for a missing libnvinfer
        return f"cannot import tensorrt or pycuda ({type(err).__name__}: {err})"
    import pycuda.driver as cuda

    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as err:  # pycuda.driver.Error, or a driver library problem
        return f"CUDA is not usable ({type(err).__name__}: {err})"
    if count < 1:
        return "no CUDA device found"
    return None
