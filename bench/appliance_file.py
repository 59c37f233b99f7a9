"""The appliance's own configuration file as the benchmarks read it (``--config``): what decides the
models and the back-end, and nothing else.

On a device the file names systemd credentials (``${CREDENTIALS_DIRECTORY}/gallery_key``, written by
``systemd/install.sh``) that exist only inside the service, and sections a benchmark has no use for;
so only :data:`TABLES` are taken from it, validated and resolved as the appliance does (relative
paths from the file's folder). A wrong key in them is refused with its key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

from appliance.config import ApplianceConfig
from appliance.config_load import read_toml_file, validate_config

#: The models, the back-end (TensorRT, its engine cache), and the storage that holds the engine
#: cache unless ``backend.tensorrt.engine_dir`` says otherwise.
TABLES = ("models", "backend", "storage")


def appliance_config(
    path: Path, adjust: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda data: data
) -> ApplianceConfig:
    """:data:`TABLES` of the file at ``path``, passed through ``adjust`` (the bench's own settings on
    top), validated and resolved.

    Raises:
        ConfigError: the file is missing, not TOML, or those tables are invalid.
    """
    data = read_toml_file(path)
    wanted = {name: data[name] for name in TABLES if name in data}
    return validate_config(adjust(wanted), base_dir=path.resolve().parent, source=path)
