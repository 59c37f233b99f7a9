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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr, ValidationError

from .config import ApplianceConfig, StrictModel
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.8-3.10
    import tomli as tomllib

#: Largest secret file read (a password or key file holds one short line).
MAX_SECRET_BYTES = 64 * 1024

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list": "an array",
    "dict": "a table",
    "NoneType": "nothing",
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
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            config_path,
            [ConfigIssue("", f"{config_path} does not exist (create it from config/appliance.toml)")],
        ) from None
    except OSError as err:
        raise ConfigError(
            config_path, [ConfigIssue("", f"cannot read {config_path}: {err.strerror}")]
        ) from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(config_path, [ConfigIssue("", f"not UTF-8 text: {err}")]) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(config_path, [ConfigIssue("", f"not valid TOML: {err}")]) from err
    return validate_config(data, base_dir=config_path.resolve().parent, source=config_path)


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
        raise ConfigError(source, [_issue(error, data) for error in err.errors()]) from None
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

    Only a regular file of at most :data:`MAX_SECRET_BYTES` is read: a device (``/dev/zero``), a
    FIFO or a huge file named by mistake must not hang the start-up or exhaust memory.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is empty, not a regular file, too large, not UTF-8, or its path is not
            a valid file name (a NUL character).
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("is not a regular file")
        data = stream.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"is larger than {MAX_SECRET_BYTES} bytes; a secret file holds one line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"is not UTF-8 text ({err.reason} at byte {err.start})") from None
    first = text.splitlines()[0] if text else ""
    if not first:
        raise ValueError("is empty")
    return first


def _load_secrets(config: ApplianceConfig) -> List[ConfigIssue]:
    issues: List[ConfigIssue] = []
    password_file = config.mqtt.password_file
    if password_file is not None:
        try:
            secret = read_secret_file(password_file)
        except OSError as err:
            issues.append(ConfigIssue("mqtt.password_file", f"cannot read {password_file}: {err.strerror}"))
        except ValueError as err:
            issues.append(ConfigIssue("mqtt.password_file", f"{password_file} {err}"))
        else:
            config.mqtt._password_from_file = SecretStr(secret)
    return issues


def secret_file_warnings(config: ApplianceConfig) -> List[str]:
    """Secret files readable by other users (for ``doctor``)."""
    warnings: List[str] = []
    for key, path in (
        ("mqtt.password_file", config.mqtt.password_file),
        ("mqtt.tls.key_file", config.mqtt.tls.key_file),
        ("updates.security_secret_file", config.updates.security_secret_file),
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


def _walk(loc: Sequence[Union[str, int]]) -> Tuple[Optional[Type[BaseModel]], Any]:
    """The model class owning the last key of ``loc``, and that key's FieldInfo (or None)."""
    model: Optional[Type[BaseModel]] = ApplianceConfig
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model, None
        annotation = field.annotation
        next_model = (
            annotation if isinstance(annotation, type) and issubclass(annotation, StrictModel) else None
        )
        if next_model is None:
            return model, field
        model = next_model
    return model, field


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


def _issue(error: Dict[str, Any], data: Dict[str, Any]) -> ConfigIssue:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    path = _format_path(loc)
    model, field = _walk(loc)
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
        return ConfigIssue(path, f"{value} has characters or a form that is not allowed (pattern {pattern})")
    message = str(error.get("msg", "invalid")).replace("Input should be", "must be")
    allowed = _allowed(field)
    if isinstance(_value_at(data, loc), dict):
        value = "a table"
    return ConfigIssue(path, f"{value} {message}" + (f"; {allowed}" if allowed else ""))
