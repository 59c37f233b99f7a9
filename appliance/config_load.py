"""Reading a configuration file: TOML parsing, validation, secrets, and error messages people can act on.

Every problem becomes a :class:`ConfigIssue` with the key path (``mqtt.tls.ca_file``,
``detector.mtcnn.thresholds[1]``), the value found (masked for secrets) and what is allowed; all of
them are collected before :class:`ConfigError` is raised, so one run of ``config check`` shows
everything that is wrong.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union, get_args

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr, ValidationError

from engines.errors import FileReadError
from engines.files import read_bounded, read_bounded_text

from .config import NAME_PATTERN, ApplianceConfig, MqttConfig, StrictModel
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.8-3.10
    import tomli as tomllib

#: Largest secret file read (a password or key file holds one short line).
MAX_SECRET_BYTES = 64 * 1024
#: Largest configuration file read (the full commented default is ~30 KB).
MAX_CONFIG_BYTES = 1024 * 1024
#: Largest gallery key file (32 raw bytes, 64 hex digits or 44 base64 characters, and a line end).
MAX_GALLERY_KEY_BYTES = 4 * 1024
#: Largest TLS file checked (a CA bundle of a few hundred certificates).
MAX_TLS_FILE_BYTES = 4 * 1024 * 1024

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list": "an array",
    "dict": "a table",
    "NoneType": "nothing",
}
#: What to try when a value does not match a field's pattern, by pattern.
_PATTERN_HINTS = {
    NAME_PATTERN: "use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or a digit "
    "(ids go into MQTT topics, events and log fields)",
}
_EXPECTED_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "model_type": "a table",
    "dict_type": "a table",
    "path_type": "a path string",
}


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file."""

    path: str  # dotted key path, "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def load_config(path: Union[str, os.PathLike[str]]) -> ApplianceConfig:
    """Read, validate and resolve a configuration file.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or invalid; ``issues`` lists every
            problem found.
    """
    config_path = Path(path)
    data = read_toml_file(config_path, " (create it from config/appliance.toml)")
    return validate_config(data, base_dir=config_path.resolve().parent, source=config_path)


def read_toml_file(path: Path, missing_hint: str = "") -> Dict[str, Any]:
    """A configuration file's TOML, read bounded (:data:`MAX_CONFIG_BYTES`, regular files only).

    Raises:
        ConfigError: missing (``missing_hint`` is added to the message), unreadable, or not TOML.
    """
    try:
        text = read_bounded_text(path, MAX_CONFIG_BYTES)
    except FileReadError as err:
        raise ConfigError(path, [ConfigIssue("", f"{err}{missing_hint if err.missing else ''}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [ConfigIssue("", f"not valid TOML: {err}")]) from err


def validate_config(
    data: Dict[str, Any], base_dir: Optional[Path] = None, source: Optional[Path] = None
) -> ApplianceConfig:
    """Validate a parsed configuration (a dict as TOML gives it) and read its secret files.

    Raises:
        ConfigError: with every problem found.
    """
    try:
        config = ApplianceConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(source, validation_issues(err, data)) from None
    issues = _load_secrets(config)
    if issues:
        raise ConfigError(source, issues)
    return config


def default_config() -> ApplianceConfig:
    """The configuration with every default (what an empty file gives)."""
    return validate_config({})


# -- secrets ---------------------------------------------------------------------------------------------


def read_secret_file(path: Path) -> str:
    """First line of a secret file, without its line ending.

    Only a regular file of at most :data:`MAX_SECRET_BYTES` is read (:func:`engines.files.read_bounded`):
    a device (``/dev/zero``), a FIFO or a huge file named by mistake must not hang the start-up or
    exhaust memory.

    Raises:
        FileReadError: the file is missing, unreadable, not a regular file, too large, not UTF-8,
            or empty.
    """
    text = read_bounded_text(path, MAX_SECRET_BYTES)
    first = text.splitlines()[0] if text else ""
    if not first:
        raise FileReadError(str(path), "is empty; write the secret on its first line")
    return first


def _load_secrets(config: ApplianceConfig) -> List[ConfigIssue]:
    """Read ``mqtt.password_file`` and check every other file the configuration names."""
    issues = load_mqtt_password(config.mqtt)
    issues.extend(check_named_files(_named_files(config)))
    return issues


def load_mqtt_password(mqtt: MqttConfig, key: str = "mqtt") -> List[ConfigIssue]:
    """Read ``password_file`` of an ``[mqtt]`` section into it; the problems found, with their key path."""
    if mqtt.password_file is None:
        return []
    try:
        secret = read_secret_file(mqtt.password_file)
    except FileReadError as err:
        return [ConfigIssue(f"{key}.password_file", str(err))]
    mqtt._password_from_file = SecretStr(secret)
    return []


def _named_files(config: ApplianceConfig) -> List[Tuple[str, Optional[Path], int]]:
    """(key, path, largest size accepted) of the files the configuration names, other than secrets read."""
    tls = config.mqtt.tls
    return [
        ("gallery.key_file", config.gallery_key_file, MAX_GALLERY_KEY_BYTES),
        ("mqtt.tls.ca_file", tls.ca_file, MAX_TLS_FILE_BYTES),
        ("mqtt.tls.cert_file", tls.cert_file, MAX_TLS_FILE_BYTES),
        ("mqtt.tls.key_file", tls.key_file, MAX_TLS_FILE_BYTES),
        ("updates.security_secret_file", config.updates.security_secret_file, MAX_SECRET_BYTES),
        ("osdp.scbk_file", config.osdp.scbk_file, MAX_SECRET_BYTES),
        ("fleet.fleet_key_file", config.fleet.fleet_key_file, MAX_SECRET_BYTES),
        *((f"{key}.scbk_file", path, MAX_SECRET_BYTES) for key, path in _reader_keys(config)),
    ]


def _reader_keys(config: ApplianceConfig) -> List[Tuple[str, Optional[Path]]]:
    """(configuration key, Secure Channel key file) of each card reader polled."""
    if config.credential_readers is None:
        return [("credential_reader", r.scbk_file) for r in config.configured_readers]
    return [(f"credential_readers[{r.id}]", r.scbk_file) for r in config.configured_readers]


def check_named_files(files: Sequence[Tuple[str, Optional[Path], int]]) -> List[ConfigIssue]:
    """Files that exist under a configured name but are not regular files of a bounded size.

    ``files`` holds ``(key path, path or None, largest size accepted)``.

    A file that does not exist yet is left to its user (the gallery key is created with the gallery);
    one that exists is read once, bounded, so that ``config check`` refuses ``/dev/zero``, a FIFO or
    a symlink loop before the daemon would hang or run out of memory on it.
    """
    issues: List[ConfigIssue] = []
    for key, path, max_bytes in files:
        if path is None or not os.path.lexists(path):
            continue
        if os.path.exists(path) and not os.access(path, os.R_OK):
            continue  # another user's file (the daemon's, checked by `config check` run by a person)
        try:
            read_bounded(path, max_bytes)
        except FileReadError as err:
            issues.append(ConfigIssue(key, str(err)))
    return issues


def secret_file_warnings(config: ApplianceConfig) -> List[str]:
    """Secret files readable by other users (for ``doctor``)."""
    warnings: List[str] = []
    for key, path in (
        ("mqtt.password_file", config.mqtt.password_file),
        ("mqtt.tls.key_file", config.mqtt.tls.key_file),
        ("updates.security_secret_file", config.updates.security_secret_file),
        ("osdp.scbk_file", config.osdp.scbk_file),
        ("fleet.fleet_key_file", config.fleet.fleet_key_file),
        *((f"{key}.scbk_file", path) for key, path in _reader_keys(config)),
    ):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"{key}: {path} is readable by other users (mode {stat.filemode(mode)}); chmod 600 it"
            )
    return warnings


# -- error messages --------------------------------------------------------------------------------------


def _format_path(loc: Sequence[Union[str, int]]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _walk(
    loc: Sequence[Union[str, int]], root: Type[BaseModel] = ApplianceConfig
) -> Tuple[Optional[Type[BaseModel]], Any]:
    """The model class owning the last key of ``loc``, and that key's FieldInfo (or None)."""
    model: Optional[Type[BaseModel]] = root
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model, None
        next_model = _section_model(field.annotation)
        if next_model is None:
            return model, field
        model = next_model
    return model, field


def _section_model(annotation: Any) -> Optional[Type[BaseModel]]:
    """The section model a field holds: itself, or the items of a list of tables (``[[cameras]]``),
    optional or not; ``None`` for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    for argument in get_args(annotation):  # Optional[List[CameraConfig]] → List[CameraConfig] → …
        model = _section_model(argument)
        if model is not None:
            return model
    return None


def _is_secret(field: Any) -> bool:
    return field is not None and "SecretStr" in repr(field.annotation)


def _allowed(field: Any) -> str:
    """What a field accepts, from its type and constraints."""
    if field is None:
        return ""
    bounds: List[str] = []
    for item in field.metadata:
        if isinstance(item, Ge):
            bounds.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            bounds.append(f"> {item.gt}")
        elif isinstance(item, Le):
            bounds.append(f"≤ {item.le}")
        elif isinstance(item, Lt):
            bounds.append(f"< {item.lt}")
        elif isinstance(item, MinLen):
            bounds.append(f"at least {item.min_length} long")
        elif isinstance(item, MaxLen):
            bounds.append(f"at most {item.max_length} long")
    return f"allowed: {' and '.join(bounds)}" if bounds else ""


def _value_at(data: Any, loc: Sequence[Union[str, int]]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_issues(
    err: ValidationError, data: Dict[str, Any], root: Type[BaseModel] = ApplianceConfig
) -> List[ConfigIssue]:
    """Every problem pydantic found validating ``data`` as ``root`` (a file of another shape, e.g. the
    fleet authority's), with key paths, values (secrets masked) and what is allowed."""
    return [_issue(error, data, root) for error in err.errors()]


def _issue(
    error: Dict[str, Any], data: Dict[str, Any], root: Type[BaseModel] = ApplianceConfig
) -> ConfigIssue:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    path = _format_path(loc)
    model, field = _walk(loc, root)
    secret = _is_secret(field)
    if loc and isinstance(loc[-1], int):
        field = None  # an array item: the array's own length limits do not apply to it
    value = "(secret, not shown)" if secret else _describe_value(error.get("input"))

    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = _format_path(loc[:-1]) or "the top level"
        allowed = sorted(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ConfigIssue(
            path, f"unknown key (value {value}); keys allowed in {parent}: {', '.join(allowed)}{hint}"
        )
    if kind == "missing":
        return ConfigIssue(path, "required key is missing")
    if kind in _EXPECTED_WORDS:
        found = _TYPE_WORDS.get(type(error.get("input")).__name__, type(error.get("input")).__name__)
        allowed = _allowed(field)
        if kind == "list_type" and isinstance(error.get("input"), dict):
            # [cameras] where [[cameras]] was meant: a table, not an array of tables.
            return ConfigIssue(
                path, f"expected an array, found a table; write one [[{path}]] table (two brackets) per entry"
            )
        return ConfigIssue(
            path,
            f"expected {_EXPECTED_WORDS[kind]}, found {found} {value}" + (f" ({allowed})" if allowed else ""),
        )
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return ConfigIssue(path, f"{value} is not allowed; allowed: {expected}")
    if kind == "value_error":
        # A cross-field rule from a model validator: its message names the keys involved.
        message = str((error.get("ctx") or {}).get("error") or error.get("msg", ""))
        return ConfigIssue(path, message)
    if kind in ("string_pattern_mismatch",):
        pattern = (error.get("ctx") or {}).get("pattern", "")
        hint = _PATTERN_HINTS.get(pattern)
        return ConfigIssue(
            path,
            f"{value} has characters or a form that is not allowed (pattern {pattern})"
            + (f"; {hint}" if hint else ""),
        )
    message = str(error.get("msg", "invalid")).replace("Input should be", "must be")
    allowed = _allowed(field)
    if isinstance(_value_at(data, loc), dict):
        value = "a table"
    return ConfigIssue(path, f"{value} {message}" + (f"; {allowed}" if allowed else ""))
