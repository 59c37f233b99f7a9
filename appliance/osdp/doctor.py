"""``doctor`` checks of the OSDP reader and of the credential reader: libosdp importable, the serial
port, the Secure Channel key.

Each finding is ``(status, subject, detail, hint)`` with status ``ok`` / ``warn`` / ``fail``, for
:mod:`appliance.doctor` to show with its own checks. Nothing here logs or returns the key.
"""

from __future__ import annotations

import os
import stat
from importlib import metadata
from typing import List, Tuple

from .binding import INSTALL_HINT, load
from .card_reader_settings import CredentialReaderConfig
from .channel import open_port
from .errors import OsdpError
from .keys import KEY_FORM, load_scbk
from .settings import OsdpConfig

Finding = Tuple[str, str, str, str]
OK, WARN, FAIL = "ok", "warn", "fail"


def _library() -> Finding:
    try:
        lib = load()
    except OsdpError as err:
        return (FAIL, "osdp library", str(err), INSTALL_HINT)
    try:
        detail = f"libosdp {metadata.version('libosdp')} ({lib.__name__})"
    except metadata.PackageNotFoundError:  # built from source without package metadata
        detail = f"libosdp importable ({lib.__name__})"
    return (OK, "osdp library", detail, "")


def _port(config: OsdpConfig) -> Finding:
    port = config.port or ""
    try:
        fd = open_port(port, config.baud_rate)
    except OsdpError as err:
        busy = "in use by another program" in str(err)
        hint = (
            "if the appliance is running it holds the port: that is expected"
            if busy
            else "check the device name, the adapter, and that the service user is in the 'dialout' group"
        )
        return (WARN if busy else FAIL, "osdp port", str(err), hint)
    os.close(fd)
    return (OK, "osdp port", f"{port} opens at {config.baud_rate} baud, address {config.address}", "")


def _key(config: OsdpConfig) -> List[Finding]:
    if not config.secure_channel:
        return [
            (
                WARN,
                "osdp secure channel",
                "osdp.secure_channel is false: card numbers cross the bus in the clear",
                "set a key (osdp.scbk_file) on the panel and here, and osdp.secure_channel = true",
            )
        ]
    path = config.scbk_file
    if path is None:
        return [(FAIL, "osdp secure channel", "osdp.scbk_file is not set", f"write {KEY_FORM}")]
    findings: List[Finding] = []
    if config.install_mode:
        findings.append(
            (
                WARN,
                "osdp install mode",
                "osdp.install_mode is on: the well-known key SCBK-D is accepted",
                "commission the reader (the panel sends its key), then set osdp.install_mode = false",
            )
        )
        if not path.exists():
            findings.append((OK, "osdp secure channel", f"{path} will hold the panel's key", ""))
            return findings
    try:
        load_scbk(path)
    except OsdpError as err:
        findings.append((FAIL, "osdp secure channel", str(err), f"write {KEY_FORM}"))
        return findings
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        findings.append(
            (WARN, "osdp secure channel", f"{path} is readable by other users", f"chmod 600 {path}")
        )
    else:
        findings.append((OK, "osdp secure channel", f"key in {path} is well formed", ""))
    return findings


def doctor_checks(config: OsdpConfig) -> List[Finding]:
    """The findings about ``[osdp]`` (none when it is disabled)."""
    if not config.enabled:
        return []
    findings = [_library()]
    if config.port is not None:
        findings.append(_port(config))
    findings.extend(_key(config))
    return findings


def card_reader_checks(config: CredentialReaderConfig) -> List[Finding]:
    """The findings about ``[credential_reader]`` (none when it is disabled)."""
    if not config.enabled:
        return []
    from .card_reader import load_library

    findings: List[Finding] = []
    try:
        load_library()
        findings.append((OK, "credential reader library", "libosdp's control panel is importable", ""))
    except OsdpError as err:
        findings.append((FAIL, "credential reader library", str(err), INSTALL_HINT))
    if config.port is not None:
        findings.append(_card_reader_port(config))
    findings.append(_card_reader_key(config))
    return findings


def _card_reader_port(config: CredentialReaderConfig) -> Finding:
    port = config.port or ""
    try:
        fd = open_port(port, config.baud_rate, "credential_reader.port")
    except OsdpError as err:
        detail = str(err)
        busy = "in use by another program" in detail
        hint = (
            "if the appliance is running it holds the port: that is expected"
            if busy
            else "check the device name, the adapter, and that the service user is in the 'dialout' group"
        )
        return (WARN if busy else FAIL, "credential reader port", detail, hint)
    os.close(fd)
    return (
        OK,
        "credential reader port",
        f"{port} opens at {config.baud_rate} baud, reader address {config.address}",
        "",
    )


def _card_reader_key(config: CredentialReaderConfig) -> Finding:
    subject = "credential reader secure channel"
    if not config.secure_channel:
        return (
            WARN,
            subject,
            "credential_reader.secure_channel is false: card numbers and PINs cross the line in the clear",
            "set a key on the reader and in credential_reader.scbk_file, and secure_channel = true",
        )
    path = config.scbk_file
    if path is None:
        return (FAIL, subject, "credential_reader.scbk_file is not set", f"write {KEY_FORM}")
    try:
        load_scbk(path, "credential_reader.scbk_file")
    except OsdpError as err:
        return (FAIL, subject, str(err), f"write {KEY_FORM}")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (WARN, subject, f"{path} is readable by other users", f"chmod 600 {path}")
    return (OK, subject, f"key in {path} is well formed", "")


__all__ = ["card_reader_checks", "doctor_checks"]
