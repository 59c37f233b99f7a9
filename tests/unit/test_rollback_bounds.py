"""Anti-rollback: a rollback package is bounded, so a captured one cannot downgrade a device later.

Tiny R-Net packages (built in well under a second) signed with a throw-away key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance import __version__
from appliance.updates import errors as codes
from appliance.updates.errors import PackageError
from appliance.updates.manifest import ROLLBACK_SCHEMA, SCHEMA, parse_manifest
from appliance.updates.package import VerifiedPackage, build_package, verify_package
from tests.package_tools import Member, read_members, resign, write_members


def _build(tmp_path: Path, model: Path, key: Ed25519PrivateKey, name: str, **kwargs: object) -> Path:
    out = tmp_path / f"{name}.pkg"
    release = int(kwargs.pop("release"))  # type: ignore[call-overload]
    build_package(model, "mtcnn-rnet", "rnet", f"0.{release}", release, key, out, reference=False, **kwargs)  # type: ignore[arg-type]
    return out


def _verify(path: Path, trusted: Dict[str, Ed25519PublicKey], active: object) -> VerifiedPackage:
    return verify_package(path, trusted, active_release=active, firmware_version=__version__)  # type: ignore[arg-type]


def _reason(path: Path, trusted: Dict[str, Ed25519PublicKey], active: object) -> str:
    with pytest.raises(PackageError) as caught:
        _verify(path, trusted, active)
    return str(caught.value.reason)


def test_a_captured_rollback_package_cannot_downgrade_a_device_later(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    # built as before the bound existed (schema 1, --rollback): one release back at most
    legacy = _build(tmp_path, rnet_file, keypair, "legacy", release=1, rollback=True)
    assert json.loads(read_members(legacy)[0].data)["schema"] == SCHEMA
    assert _verify(legacy, trusted, 2).manifest.release == 1
    assert _reason(legacy, trusted, 9) == codes.NOT_NEWER  # TUF's rollback attack: refused now
    with pytest.raises(PackageError, match="--rollback-from 9"):
        _verify(legacy, trusted, 9)


def test_a_rollback_from_a_release_is_void_once_a_higher_one_is_activated(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    back = _build(tmp_path, rnet_file, keypair, "back", release=4, rollback_from=9)
    manifest = _verify(back, trusted, 9).manifest
    assert (manifest.schema_version, manifest.rollback, manifest.rollback_from) == (ROLLBACK_SCHEMA, True, 9)
    assert _reason(back, trusted, 10) == codes.NOT_NEWER  # release 10 came after it: replay refused
    assert _reason(back, trusted, 8) == codes.NOT_NEWER  # not the release it was signed to replace
    assert _verify(back, trusted, None).manifest.release == 4  # nothing activated yet
    assert _verify(back, trusted, 3).manifest.release == 4  # above the highest: an ordinary update


def test_rollback_from_is_signed_and_schema_checked(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    back = _build(tmp_path, rnet_file, keypair, "back", release=4, rollback_from=9)
    members = read_members(back)
    edited = dict(json.loads(members[0].data), rollback_from=12)
    forged = [Member("manifest.json", json.dumps(edited).encode()), *members[1:]]
    assert _reason(write_members(tmp_path / "forged.pkg", forged), trusted, 12) == codes.BAD_SIGNATURE

    plain = _build(tmp_path, rnet_file, keypair, "plain", release=5)
    document = json.loads(read_members(plain)[0].data)
    assert document["schema"] == SCHEMA and "rollback_from" not in document  # older firmware reads it
    for change in (
        {"rollback_from": 9},  # schema 1 has no bound
        {"schema": ROLLBACK_SCHEMA},  # schema 2 without rollback and rollback_from
        {"schema": ROLLBACK_SCHEMA, "rollback": True, "rollback_from": 5},  # not above the release
    ):
        resigned = resign(read_members(plain), keypair, dict(document, **change))
        path = write_members(tmp_path / "changed.pkg", resigned)
        assert _reason(path, trusted, None) == codes.MALFORMED, change
    assert parse_manifest(read_members(plain)[0].data).rollback_from is None


def test_the_swap_manager_applies_the_same_bound(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    from types import SimpleNamespace

    from appliance.updates.active import ActiveModels, InstalledModel
    from appliance.updates.swap import SwapManager

    active = ActiveModels(tmp_path / "storage")
    installed = InstalledModel("mtcnn-rnet", "0.9", 9, "packages/rnet-9", "model.onnx", 1, "0" * 64)
    active.commit(active.with_active(installed))
    manager = SimpleNamespace(active=active)  # _check_release reads only the pointer
    legacy = _verify(_build(tmp_path, rnet_file, keypair, "legacy", release=1, rollback=True), trusted, None)
    with pytest.raises(PackageError) as refused:
        SwapManager._check_release(manager, "mtcnn-rnet", legacy.manifest)  # type: ignore[arg-type]
    assert refused.value.reason == codes.NOT_NEWER
    bounded = _verify(
        _build(tmp_path, rnet_file, keypair, "bounded", release=8, rollback_from=9), trusted, None
    )
    SwapManager._check_release(manager, "mtcnn-rnet", bounded.manifest)  # type: ignore[arg-type]
