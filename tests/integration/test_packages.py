"""Signed model packages with the real MobileFaceNet: build, verify, reproduce, and every refusal.

The model is ``shared/models/mobilefacenet_foamliu/MobileFaceNet.onnx`` repackaged as version 2; the
reference inputs are real faces from ``shared/data`` aligned by the real MTCNN. Hostile packages are
made by tar surgery on the real package (tests/package_tools.py). No mocks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance import __version__
from appliance.cli import main
from appliance.updates import errors as codes
from appliance.updates.errors import PackageError
from appliance.updates.keys import generate_keypair, key_id, load_private_key, load_trusted_keys
from appliance.updates.package import (
    VerifiedPackage,
    aligned_faces,
    build_package,
    verify_package,
)
from engines.backends import open_model
from engines.registry import get_model
from tests.package_tools import (
    Member,
    member_offsets,
    read_members,
    resign,
    signature_json,
    write_members,
)

MFN = "mobilefacenet_foamliu/MobileFaceNet.onnx"
FACES = ("faces/faceapi_raj", "faces/faceapi_penny", "faces/fr_obama")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    folder = tmp_path_factory.mktemp("keys")
    signer = generate_keypair(folder / "trusted", "release")
    other = generate_keypair(folder / "untrusted", "someone-else")
    return {
        "dir": folder / "trusted",
        "signer_path": signer.private_path,
        "signer": load_private_key(signer.private_path),
        "other": load_private_key(other.private_path),
        "trusted": load_trusted_keys(folder / "trusted"),
    }


@pytest.fixture(scope="module")
def faces(shared_data: Path, shared_models: Path) -> np.ndarray:
    images = [sorted((shared_data / folder).iterdir())[0] for folder in FACES]
    crops = aligned_faces(images, shared_models)
    assert crops.shape == (len(FACES), 112, 112, 3) and crops.dtype == np.uint8
    return crops


@pytest.fixture(scope="module")
def package_path(
    tmp_path_factory: pytest.TempPathFactory, shared_models: Path, keys: Dict[str, object], faces: np.ndarray
) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("pkg") / "mobilefacenet-2.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "2",
        2,
        keys["signer"],  # type: ignore[arg-type]
        out,
        reference_faces=faces,
    )
    yield out


def _verify(path: Path, trusted: Dict[str, Ed25519PublicKey], **kwargs: object) -> VerifiedPackage:
    options: Dict[str, object] = {"active_release": 1, "firmware_version": __version__}
    options.update(kwargs)
    return verify_package(path, trusted, **options)  # type: ignore[arg-type]


def _reason(path: Path, trusted: Dict[str, Ed25519PublicKey], **kwargs: object) -> str:
    with pytest.raises(PackageError) as caught:
        _verify(path, trusted, **kwargs)
    assert str(caught.value)  # every refusal says why
    return caught.value.reason


def _trusted(keys: Dict[str, object]) -> Dict[str, Ed25519PublicKey]:
    return keys["trusted"]  # type: ignore[return-value]


def _manifest(members: List[Member]) -> dict:
    return json.loads(members[0].data)


# -- the happy path --------------------------------------------------------------------------------


def test_real_model_repackaged_verified_and_reproduced(
    package_path: Path, keys: Dict[str, object], shared_models: Path, tmp_path: Path
) -> None:
    package = _verify(package_path, _trusted(keys))
    manifest = package.manifest
    assert (manifest.kind, manifest.version, manifest.release) == ("mobilefacenet", "2", 2)
    assert package.key_id == key_id(keys["signer"].public_key())  # type: ignore[attr-defined]
    assert manifest.embedding_size == 128
    registry = get_model("mobilefacenet")
    assert manifest.files["model.onnx"].sha256 == registry.sha256
    assert manifest.files["model.onnx"].size == registry.size
    reference = package.reference()
    assert reference is not None
    inputs, outputs = reference
    assert inputs["input0"].shape == (len(FACES), 3, 112, 112)
    assert outputs["output0"].shape == (len(FACES), 128)
    # three different people: their embeddings differ, so the reference checks something
    unit = outputs["output0"] / np.linalg.norm(outputs["output0"], axis=1, keepdims=True)
    assert float(np.max(unit @ unit.T - np.eye(len(FACES)))) < 0.9

    # what the swap manager does: extract, load on the CPU back-end, compare with the reference
    model_path = package.extract_to(tmp_path / "staged")
    assert model_path.read_bytes() == (shared_models / MFN).read_bytes()
    with open_model("cpu", package.model_spec(), tmp_path / "staged") as backend:
        check = package.check_backend(backend)
        assert check.ok, check.problems
        assert check.min_cosine["output0"] > 0.9999
        # and the pipeline's own embedder gives the same vectors for the same crops
        from appliance.vision.embedder import Embedder

        embedded = Embedder(backend).embed(np.ascontiguousarray(_faces_of(inputs)))
    np.testing.assert_allclose(embedded, unit, atol=1e-4)


def _faces_of(blob: Dict[str, np.ndarray]) -> np.ndarray:
    """Undo the MobileFaceNet pre-processing: NCHW normalised RGB → NHWC uint8 BGR crops."""
    pre = get_model("mobilefacenet").preprocessing
    pixels = blob["input0"].transpose(0, 2, 3, 1) * np.asarray(pre.std) + np.asarray(pre.mean)
    rgb = np.clip(np.round(pixels / pre.input_scale), 0, 255).astype(np.uint8)
    return rgb[..., ::-1]


# -- refusals ------------------------------------------------------------------------------------------


def test_forged_and_foreign_signatures(package_path: Path, keys: Dict[str, object], tmp_path: Path) -> None:
    members = read_members(package_path)
    trusted = _trusted(keys)
    signer_id = key_id(keys["signer"].public_key())  # type: ignore[attr-defined]
    other: Ed25519PrivateKey = keys["other"]  # type: ignore[assignment]

    forged = [
        members[0],
        Member("manifest.sig", signature_json(other, members[0].data, signer_id)),
        *members[2:],
    ]
    assert _reason(write_members(tmp_path / "forged.pkg", forged), trusted) == codes.BAD_SIGNATURE

    foreign = resign(members, other, _manifest(members))
    assert _reason(write_members(tmp_path / "foreign.pkg", foreign), trusted) == codes.UNKNOWN_KEY

    # a manifest edited after signing (a higher release to beat anti-rollback) with the old signature
    edited = dict(_manifest(members), release=99)
    altered = [Member("manifest.json", json.dumps(edited, indent=2, sort_keys=True).encode()), *members[1:]]
    assert _reason(write_members(tmp_path / "altered.pkg", altered), trusted) == codes.BAD_SIGNATURE

    signature = json.loads(members[1].data)
    raw = bytearray(base64.b64decode(signature["signature"]))
    raw[17] ^= 0x01
    signature["signature"] = base64.b64encode(bytes(raw)).decode("ascii")
    flipped = [members[0], Member("manifest.sig", json.dumps(signature).encode()), *members[2:]]
    assert _reason(write_members(tmp_path / "flipped-sig.pkg", flipped), trusted) == codes.BAD_SIGNATURE

    unsigned = [members[0], *members[2:]]
    assert _reason(write_members(tmp_path / "unsigned.pkg", unsigned), trusted) == codes.NO_SIGNATURE


def test_flipped_payload_byte_and_damaged_headers(
    package_path: Path, keys: Dict[str, object], tmp_path: Path
) -> None:
    trusted = _trusted(keys)
    original = package_path.read_bytes()
    model = next(info for info in member_offsets(package_path) if info.name == "payload/model.onnx")
    for offset in (
        model.offset_data,
        model.offset_data + model.size // 2,
        model.offset_data + model.size - 1,
    ):
        data = bytearray(original)
        data[offset] ^= 0x40
        damaged = tmp_path / f"flip-{offset}.pkg"
        damaged.write_bytes(bytes(data))
        assert _reason(damaged, trusted) == codes.TAMPERED, offset

    header = bytearray(original)
    header[model.offset + 130] ^= 0x01  # inside the model's tar header (its checksum no longer adds up)
    (tmp_path / "header.pkg").write_bytes(bytes(header))
    assert _reason(tmp_path / "header.pkg", trusted) == codes.MALFORMED

    (tmp_path / "appended.pkg").write_bytes(original + b"#!/bin/sh\nrm -rf /\n" + b"\x00" * 1024)
    assert _reason(tmp_path / "appended.pkg", trusted) == codes.MALFORMED


def test_truncated_at_several_points(package_path: Path, keys: Dict[str, object], tmp_path: Path) -> None:
    trusted = _trusted(keys)
    original = package_path.read_bytes()
    infos = member_offsets(package_path)
    last = infos[-1]
    end_of_members = last.offset_data + ((last.size + 511) // 512) * 512
    cuts = {
        "nothing": 0,
        "inside the first header": 100,
        "inside manifest.json": infos[0].offset_data + 10,
        "inside the signature's header": infos[1].offset + 200,
        "inside the model's header": infos[2].offset + 300,
        "in the middle of the model": infos[2].offset_data + infos[2].size // 2,
        "one byte short of the model": infos[2].offset_data + infos[2].size - 1,
        "inside the last member": last.offset_data + last.size // 2,
        "after the last member's data, before its padding": last.offset_data + last.size,
        "before the end-of-archive blocks": end_of_members,
        "inside the end-of-archive blocks": end_of_members + 700,
    }
    for label, cut in cuts.items():
        short = tmp_path / f"cut-{cut}.pkg"
        short.write_bytes(original[:cut])
        assert _reason(short, trusted) == codes.TRUNCATED, label


def test_anti_rollback_and_the_rollback_permission(
    shared_models: Path, keys: Dict[str, object], tmp_path: Path
) -> None:
    trusted = _trusted(keys)
    old = tmp_path / "old.pkg"
    build_package(
        shared_models / MFN, "mobilefacenet", "mobilefacenet", "1.1", 3, keys["signer"], old, reference=False
    )  # type: ignore[arg-type]
    assert _verify(old, trusted, active_release=2).manifest.release == 3
    assert _reason(old, trusted, active_release=3) == codes.NOT_NEWER  # replayed: same release
    assert _reason(old, trusted, active_release=5) == codes.NOT_NEWER  # replayed: older release
    assert _verify(old, trusted, active_release=None).manifest.release == 3  # nothing active yet

    downgrade = tmp_path / "downgrade.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "1.1",
        3,
        keys["signer"],  # type: ignore[arg-type]
        downgrade,
        reference=False,
        rollback=True,
    )
    accepted = _verify(downgrade, trusted, active_release=4)
    assert accepted.manifest.rollback and accepted.manifest.release == 3
    # without rollback_from (schema 1) a rollback goes back one release at most: a captured one
    # cannot downgrade a device that has moved on
    assert _reason(downgrade, trusted, active_release=5) == codes.NOT_NEWER
    bounded = tmp_path / "bounded.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "1.1",
        3,
        keys["signer"],  # type: ignore[arg-type]
        bounded,
        reference=False,
        rollback_from=5,
    )
    assert _verify(bounded, trusted, active_release=5).manifest.rollback_from == 5
    assert _reason(bounded, trusted, active_release=6) == codes.NOT_NEWER

    # the flag is signed: setting it on the old package breaks the signature
    members = read_members(old)
    flagged = dict(_manifest(members), rollback=True)
    tampered = [Member("manifest.json", json.dumps(flagged, indent=2, sort_keys=True).encode()), *members[1:]]
    assert (
        _reason(write_members(tmp_path / "flagged.pkg", tampered), trusted, active_release=5)
        == codes.BAD_SIGNATURE
    )


def test_firmware_and_size_limits(
    shared_models: Path, keys: Dict[str, object], tmp_path: Path, package_path: Path
) -> None:
    trusted = _trusted(keys)
    future = tmp_path / "future.pkg"
    build_package(
        shared_models / MFN,
        "mobilefacenet",
        "mobilefacenet",
        "3",
        4,
        keys["signer"],  # type: ignore[arg-type]
        future,
        reference=False,
        min_firmware="99.0",
    )
    assert _reason(future, trusted) == codes.FIRMWARE_TOO_OLD
    assert _verify(future, trusted, firmware_version="99.0.1").manifest.min_firmware == "99.0"
    assert _reason(package_path, trusted, max_size=1024 * 1024) == codes.TOO_LARGE


def test_incompatible_io(
    shared_models: Path, keys: Dict[str, object], tmp_path: Path, package_path: Path
) -> None:
    trusted = _trusted(keys)
    with pytest.raises(PackageError) as caught:  # R-Net in the embedder's place
        build_package(
            shared_models / "mtcnn_onnx/rnet.onnx",
            "mobilefacenet",
            "rnet",
            "1",
            5,
            keys["signer"],  # type: ignore[arg-type]
            tmp_path / "never.pkg",
        )
    assert caught.value.reason == codes.INCOMPATIBLE and "input0" in str(caught.value)
    assert not (tmp_path / "never.pkg").exists()

    members = read_members(package_path)
    manifest = _manifest(members)

    # a correctly signed manifest that states another embedding size
    outputs = [dict(manifest["outputs"][0], shape=[1, 512])]
    wide = resign(members, keys["signer"], dict(manifest, outputs=outputs, embedding_size=512))  # type: ignore[arg-type]
    assert _reason(write_members(tmp_path / "wide.pkg", wide), trusted) == codes.INCOMPATIBLE

    # a correctly signed manifest whose model is R-Net while it claims MobileFaceNet's I/O
    rnet = (shared_models / "mtcnn_onnx/rnet.onnx").read_bytes()
    files = dict(
        manifest["files"], **{"model.onnx": {"size": len(rnet), "sha256": hashlib.sha256(rnet).hexdigest()}}
    )
    swapped = resign(members, keys["signer"], dict(manifest, files=files))  # type: ignore[arg-type]
    swapped = [m if m.name != "payload/model.onnx" else Member(m.name, rnet) for m in swapped]
    assert _reason(write_members(tmp_path / "swapped.pkg", swapped), trusted) == codes.INCOMPATIBLE


def test_hostile_members(package_path: Path, keys: Dict[str, object], tmp_path: Path) -> None:
    trusted = _trusted(keys)
    members = read_members(package_path)
    signer: Ed25519PrivateKey = keys["signer"]  # type: ignore[assignment]
    manifest = _manifest(members)
    payload = members[2:]
    cases = {
        "path traversal": [*members[:2], Member("payload/../../../../tmp/evil.sh", b"#!/bin/sh\n"), *payload],
        "traversal in place of the model": [
            *members[:2],
            Member("payload/../model.onnx", payload[0].data),
            *payload[1:],
        ],
        "absolute path": [*members, Member("/etc/cron.d/evil", b"* * * * * root sh\n")],
        "symlink": [
            *members[:2],
            Member("payload/model.onnx", type=tarfile.SYMTYPE, linkname="/etc/shadow"),
            *payload[1:],
        ],
        "symlink manifest": [
            Member("manifest.json", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            *members[1:],
        ],
        "duplicate model": [*members, Member("payload/model.onnx", b"evil twin")],
        "duplicate manifest": [*members, members[0]],
        "fifo": [*members, Member("payload/pipe", type=tarfile.FIFOTYPE)],
    }
    for label, items in cases.items():
        path = write_members(tmp_path / f"{label.replace(' ', '-')}.pkg", items)
        assert _reason(path, trusted) == codes.MALFORMED, label
    # nothing was written outside, whatever was in the archive
    assert not Path("/tmp/evil.sh").exists()

    # a manifest over 64 KiB is refused before it is read, even when correctly signed
    big = json.dumps(manifest, indent=2, sort_keys=True).encode() + b" " * (65 * 1024)
    oversize = [Member("manifest.json", big), Member("manifest.sig", signature_json(signer, big)), *payload]
    assert _reason(write_members(tmp_path / "big-manifest.pkg", oversize), trusted) == codes.TOO_LARGE

    # pax extended headers (which could rename a member behind the name checks) are refused
    commented = [*members[:2], Member(payload[0].name, payload[0].data, pax={"comment": "hi"}), *payload[1:]]
    pax = write_members(tmp_path / "pax.pkg", commented, fmt=tarfile.PAX_FORMAT)
    assert _reason(pax, trusted) == codes.MALFORMED


# -- the command line ------------------------------------------------------------------------------


def test_cli_keys_build_verify(
    tmp_path: Path, shared_models: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir = tmp_path / "keys"
    assert main(["keys", "generate", "--dir", str(keys_dir), "--name", "ci"]) == 0
    generated = capsys.readouterr().out
    assert "ci.key" in generated and "ci.pub" in generated
    assert main(["keys", "generate", "--dir", str(keys_dir), "--name", "ci"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err

    config = tmp_path / "appliance.toml"
    config.write_text(f'[models]\ndir = "{shared_models}"\n[storage]\ndir = "{tmp_path / "state"}"\n')
    photos = tmp_path / "photos"
    photos.mkdir()
    for folder in FACES:
        source = sorted((shared_data / folder).iterdir())[0]
        (photos / f"{folder.split('/')[-1]}{source.suffix}").write_bytes(source.read_bytes())
    out = tmp_path / "mfn.pkg"
    build = [
        "package",
        "build",
        str(shared_models / MFN),
        "--kind",
        "mobilefacenet",
        "--name",
        "mobilefacenet",
        "--version",
        "2",
        "--release",
        "2",
        "--key",
        str(keys_dir / "ci.key"),
        "-o",
        str(out),
        "--reference-images",
        str(photos),
        "--config",
        str(config),
    ]
    assert main(build) == 0
    assert "mobilefacenet@2" in capsys.readouterr().out

    assert (
        main(["package", "verify", str(out), "--trusted", str(keys_dir), "--active-release", "1", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["manifest"]["release"] == 2 and result["manifest"]["embedding_size"] == 128

    assert (
        main(["package", "verify", str(out), "--trusted", str(keys_dir), "--active-release", "2", "--json"])
        == 1
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["reason"] == "not_newer" and "refused (not_newer)" in captured.err

    other = tmp_path / "other-keys"
    generate_keypair(other, "stranger")
    assert main(["package", "verify", str(out), "--trusted", str(other)]) == 1
    assert "refused (unknown_key)" in capsys.readouterr().err

    # usage errors: exit 2
    assert main(["package", "verify", str(out), "--trusted", str(tmp_path / "absent")]) == 2
    wrong_kind = [*build]
    wrong_kind[wrong_kind.index("--kind") + 1] = "mtcnn-onet"
    assert main(wrong_kind) == 2  # --reference-images is for embedders only
    bad_version = [*build]
    bad_version[bad_version.index("--version") + 1] = "2 beta"
    assert main(bad_version) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["package", "build", str(shared_models / MFN), "--kind", "arcface"])
    assert exited.value.code == 2
