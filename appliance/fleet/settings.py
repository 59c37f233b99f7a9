"""The enrolment authority's configuration file (``AUTH.toml``), for ``face-appliance fleet …``.

The authority is not a door: it has no camera, gallery or daemon. Its file is its own small TOML,
validated like the appliance's (:mod:`appliance.config_load`: bounded read, every problem with its key
path, relative paths from the file's folder, ``${CREDENTIALS_DIRECTORY}``, secrets never printed), and
made of:

* ``[authority]`` (:class:`AuthorityConfig`): the site, the topic prefix, the signing key, the fleet
  key, the state folder, the tombstone retention;
* the appliance's own sections, reused as they are, for what the authority shares with a door:
  ``[mqtt]`` (the broker: host, port, TLS, user name, ``password_file``; ``prefix`` and
  ``homeassistant`` do not apply and are refused), and ``[models]``, ``[backend]``, ``[detector]``,
  ``[embedder]``, ``[gallery]`` — the models and the same detection, alignment and quality checks as
  ``enroll`` (of ``[gallery]`` only the enrolment limits ``min_face_px``, ``min_sharpness``,
  ``max_yaw_deg``, ``max_pitch_deg`` are used), and ``[logging]``.

Example::

    [authority]
    site = "hq"
    signing_key = "keys/authority.key"      # its .pub goes to every door's fleet.trusted_keys_dir
    fleet_key_file = "keys/fleet.key"       # copied to every door (fleet.fleet_key_file)
    state_dir = "state"

    [mqtt]
    host = "broker.example"
    port = 8883
    username = "fleet-authority"
    password_file = "mqtt_password"
    tls.enabled = true

    [models]
    dir = "/var/lib/face-appliance/models"
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pydantic import Field, ValidationError, field_validator

from ..config import (
    ApplianceConfig,
    BackendConfig,
    DetectorConfig,
    EmbedderConfig,
    GalleryConfig,
    LoggingConfig,
    ModelsConfig,
    MqttConfig,
    StorageConfig,
)
from ..config_load import (
    MAX_SECRET_BYTES,
    MAX_TLS_FILE_BYTES,
    ConfigIssue,
    check_named_files,
    load_mqtt_password,
    read_toml_file,
    validation_issues,
)
from ..config_types import ConfigPath, StrictModel
from ..errors import ConfigError

DEFAULT_PREFIX = "face-appliance-fleet"
_LEVEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PREFIX = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$"
#: [mqtt] keys that mean nothing to the authority (its topics are under authority.prefix).
_UNUSED_MQTT_KEYS = ("prefix", "homeassistant")


class AuthorityConfig(StrictModel):
    """[authority] — The site's enrolment authority: what it signs with, encrypts with, and remembers."""

    site: str = Field(
        pattern=_LEVEL,
        description="The site whose doors take these records (a topic level; the doors' fleet.site).",
        json_schema_extra={"example": "hq"},
    )
    prefix: str = Field(
        DEFAULT_PREFIX,
        pattern=_PREFIX,
        description="Topic prefix of the fleet (the doors' fleet.prefix): {prefix}/{site}/records/{id}, …",
    )
    signing_key: ConfigPath = Field(
        description="The authority's Ed25519 private key (PEM, mode 0600; NAME.key beside NAME.pub). "
        "`fleet init` creates the pair when absent; NAME.pub goes into every door's fleet.trusted_keys_dir.",
        json_schema_extra={"example": "keys/authority.key"},
    )
    signing_key_passphrase_file: Optional[ConfigPath] = Field(
        None,
        description="File holding the signing key's passphrase (first line), when the key is encrypted.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/authority_passphrase"},
    )
    fleet_key_file: ConfigPath = Field(
        description="The site's fleet key (64 hex digits, mode 0600), which encrypts every record; "
        "`fleet init` creates it; every door of the site holds a copy (fleet.fleet_key_file).",
        json_schema_extra={"example": "keys/fleet.key"},
    )
    state_dir: ConfigPath = Field(
        description="The authority's state (mode 0700): the revision counter, the index of what was "
        "published and the sealed records (to republish them). Back it up.",
        json_schema_extra={"example": "state"},
    )
    tombstone_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Tombstones stay retained this long (`fleet prune` clears older ones). A door offline "
        "longer still removes the identity, from the manifest.",
    )
    keep_names: bool = Field(
        True,
        description="Keep each identity's name and external id in the state's index (mode 0600) so "
        "`fleet list` can show them; false keeps only ids and revisions.",
    )
    door_prefix: str = Field(
        "face-appliance",
        pattern=_PREFIX,
        description="The doors' mqtt.prefix: `fleet status` reads {door_prefix}/{device_id}/availability "
        "to tell a door that is offline.",
    )
    broker_wait_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="After subscribing, how long to wait for the retained manifest before taking the "
        "broker to have none.",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest wait for the broker: connecting, each acknowledgement."
    )

    @field_validator("prefix", "door_prefix")
    @classmethod
    def _no_empty_levels(cls, value: str) -> str:
        if value.endswith("/") or "//" in value:
            raise ValueError(f"{value!r} has an empty topic level")
        return value


class AuthorityFile(StrictModel):
    """The whole authority file: ``[authority]`` and the appliance sections it shares."""

    authority: AuthorityConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def appliance_config(self) -> ApplianceConfig:
        """An appliance configuration with these models and checks, for the same loading and
        enrolment code as ``enroll`` (:func:`appliance.runtime.loading.load_analyzer`). Its storage is
        the state folder (no installed model packages there: the registry's models are used)."""
        return ApplianceConfig(
            models=self.models,
            backend=self.backend,
            detector=self.detector,
            embedder=self.embedder,
            gallery=self.gallery,
            logging=self.logging,
            storage=StorageConfig(dir=self.authority.state_dir),
        )

    def client_id(self) -> str:
        """The MQTT client id: ``mqtt.client_id``, else one per run (two operators never collide)."""
        if self.mqtt.client_id:
            return self.mqtt.client_id
        return f"fleet-authority-{self.authority.site}-{os.urandom(4).hex()}"[:64]


def _unused_keys(data: Dict[str, Any]) -> List[ConfigIssue]:
    mqtt = data.get("mqtt")
    if not isinstance(mqtt, dict):
        return []
    return [
        ConfigIssue(
            f"mqtt.{key}",
            "not used by the fleet authority: its topics are under authority.prefix; remove it",
        )
        for key in _UNUSED_MQTT_KEYS
        if key in mqtt
    ]


def validate_authority(
    data: Dict[str, Any], base_dir: Optional[Path] = None, source: Optional[Path] = None
) -> AuthorityFile:
    """Validate a parsed authority file and read its secret files.

    Raises:
        ConfigError: with every problem found, each with its key path.
    """
    issues = _unused_keys(data)
    try:
        config = AuthorityFile.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(source, issues + validation_issues(err, data, AuthorityFile)) from None
    issues.extend(load_mqtt_password(config.mqtt))
    tls = config.mqtt.tls
    passphrase = config.authority.signing_key_passphrase_file
    issues.extend(
        check_named_files(
            [
                ("mqtt.tls.ca_file", tls.ca_file, MAX_TLS_FILE_BYTES),
                ("mqtt.tls.cert_file", tls.cert_file, MAX_TLS_FILE_BYTES),
                ("mqtt.tls.key_file", tls.key_file, MAX_TLS_FILE_BYTES),
                ("authority.signing_key_passphrase_file", passphrase, MAX_SECRET_BYTES),
            ]
        )
    )
    if issues:
        raise ConfigError(source, issues)
    return config


def load_authority_config(path: Union[str, os.PathLike[str]]) -> AuthorityFile:
    """Read, validate and resolve an authority file (relative paths from its folder).

    Raises:
        ConfigError: missing, unreadable, not TOML, or invalid (every problem, with its key path).
    """
    config_path = Path(path)
    data = read_toml_file(config_path, " (see `face-appliance fleet init --help` for an example)")
    return validate_authority(data, base_dir=config_path.resolve().parent, source=config_path)


def signing_key_name(config: AuthorityConfig) -> Optional[str]:
    """The key pair's NAME when ``signing_key`` is ``…/NAME.key`` (what ``fleet init`` can create)."""
    match = re.match(r"^(.+)\.key$", config.signing_key.name)
    return match.group(1) if match else None


__all__ = [
    "DEFAULT_PREFIX",
    "AuthorityConfig",
    "AuthorityFile",
    "load_authority_config",
    "signing_key_name",
    "validate_authority",
]
