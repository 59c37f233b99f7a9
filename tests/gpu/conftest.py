"""Fixtures for the ``gpu`` suite: it runs only where TensorRT, pycuda and a CUDA device are present.

Every test marked ``gpu`` is skipped, with the reason, when ``tensorrt`` or ``pycuda`` does not import
or no CUDA device answers — on the development machines and in CI. On a Jetson (or a CUDA machine
with TensorRT) the suite builds real engines from the real models, so it needs the models directory:
``FACE_APPLIANCE_MODELS_DIR``, by default ``models`` in the shared directory (``../shared`` next to
the repository, or ``FACE_APPLIANCE_SHARED``). The real images come from the ``shared_data`` fixture of
``tests/conftest.py``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = (
    Path(os.environ.get("FACE_APPLIANCE_SHARED", str(REPO_ROOT.parent / "shared"))) / "models"
)


@lru_cache(maxsize=1)
def gpu_unavailable_reason() -> Optional[str]:
    """Why the TensorRT back-end cannot run here, or ``None`` when it can (the product's own check)."""
    from engines.tensorrt.platform import tensorrt_unavailable

    return tensorrt_unavailable()


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Skip every ``gpu`` test, naming the reason, where TensorRT or a CUDA device is missing."""
    del config
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"gpu suite skipped: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The real models: ``FACE_APPLIANCE_MODELS_DIR``, by default ``../shared/models``."""
    path = Path(os.environ.get("FACE_APPLIANCE_MODELS_DIR", str(DEFAULT_MODELS_DIR))).expanduser()
    if not path.is_dir():
        pytest.fail(
            f"the models directory {path} does not exist: set FACE_APPLIANCE_MODELS_DIR, or put the "
            f"shared models at {DEFAULT_MODELS_DIR} (face-appliance models fetch fills one)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One engine cache for the session, so each engine is built once and then loaded from the cache."""
    yield tmp_path_factory.mktemp("engines")
