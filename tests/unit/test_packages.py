"""Model packages on tiny real ONNX models: keys, the manifest schema, compatibility, build and verify.

The tiny models (tests/package_tools.py) are real ONNX graphs run by ONNX Runtime, with the inputs and
outputs of registry models. The real MobileFaceNet and the full refusal matrix are in
tests/integration/test_packages.py.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance import __version__
from appliance.updates import errors as codes
from appliance.updates.errors import KeyFileError, PackageError, UpdateError
from appliance.updates.keys import generate_keypair, key_id, load_private_key, load_trusted_keys
from appliance.updates.manifest import (
    Manifest,
    compatibility_problems,
    parse_manifest,
    parse_version,
    read_onnx_io,
    version_at_least,
)
from appliance.updates.package import build_package, compare_reference, verify_package
from tests.package_tools import Member, read_members, resign, tiny_embedder, tiny_rnet, write_members


def _build(tmp_path: Path, model: Path, key: Ed25519PrivateKey, **kwargs: object) -> Path:
    out = tmp_path / "out.pkg"
    defaults: Dict[str, object] = {"kind": "mtcnn-rnet", "name": "rnet", "version": "2", "release": 2}
    defaults.update(kwargs)
    build_package(
        model,
        str(defaults.pop("kind")),
        str(defaults.pop("name")),
        str(defaults.pop("version")),
        int(defaults.pop("release")),  # type: ignore[call-overload]
        key,
        out,
        **defaults,  # type: ignore[arg-type]
    )
    return out


def _refusal(path: Path, trusted: Dict[str, Ed25519PublicKey], **kwargs: object) -> PackageError:
    options: Dict[str, object] = {"active_release": None, "firmware_version": __version__}
    options.update(kwargs)
    with pytest.raises(PackageError) as caught:
        verify_package(path, trusted, **options)  # type: ignore[arg-type]
    return caught.value


# -- keys ------------------------------------------------------------------------------------------------


def test_generate_keypair_writes_pem_files_with_safe_modes_and_a_stable_id(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "keys", "build-1")
    assert pair.private_path == tmp_path / "keys" / "build-1.key"
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pair.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(pair.private_path)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import hashlib

    assert pair.key_id == hashlib.sha256(raw).hexdigest()[:16] == key_id(private.public_key())
    assert set(load_trusted_keys(tmp_path / "keys")) == {pair.key_id}
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")]  # no temp files left


def test_generate_keypair_never_overwrites(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, "k")
    before = (pair.private_path.read_bytes(), pair.public_path.read_bytes())
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keypair(tmp_path, "k")
    assert (pair.private_path.read_bytes(), pair.public_path.read_bytes()) == before
    pair.private_path.unlink()  # the .pub alone also blocks a new pair of that name
    with pytest.raises(KeyFileError, match=r"k\.pub"):
        generate_keypair(tmp_path, "k")
    assert not pair.private_path.exists()
    with pytest.raises(KeyFileError, match="not allowed"):
        generate_keypair(tmp_path, "../escape")


def test_encrypted_private_key(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, "locked", passphrase=b"correct horse")
    assert b"ENCRYPTED" in pair.private_path.read_bytes()
    assert key_id(load_private_key(pair.private_path, b"correct horse").public_key()) == pair.key_id
    with pytest.raises(KeyFileError, match="passphrase"):
        load_private_key(pair.private_path)
    with pytest.raises(KeyFileError, match="passphrase is wrong"):
        load_private_key(pair.private_path, b"wrong")


def test_private_key_refusals(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, "k")
    os.chmod(pair.private_path, 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_private_key(pair.private_path)
    rsa_path = tmp_path / "rsa.key"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(rsa_path, 0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        load_private_key(rsa_path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "absent.key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_trusted_keys([pair.private_path])


def test_trusted_keys_folder(tmp_path: Path) -> None:
    one, two = generate_keypair(tmp_path, "one"), generate_keypair(tmp_path, "two")
    (tmp_path / "README.txt").write_text("not a key, ignored: only *.pub files are read")
    keys = load_trusted_keys(tmp_path)
    assert set(keys) == {one.key_id, two.key_id}
    assert set(load_trusted_keys([one.public_path])) == {one.key_id}
    (tmp_path / "broken.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError, match=r"broken\.pub"):
        load_trusted_keys(tmp_path)
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_trusted_keys([rsa_pub])
    with pytest.raises(KeyFileError, match="does not exist"):
        load_trusted_keys(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_trusted_keys(empty) == {}


# -- versions, schema, compatibility --------------------------------------------------------------


def test_version_compare() -> None:
    assert parse_version("0.1.0") == (0, 1, 0)
    assert parse_version("1.2.3rc1") == (1, 2, 3)
    assert version_at_least("0.1.0", "0.1")
    assert version_at_least("0.10.0", "0.9.9")  # numeric, not text
    assert not version_at_least("0.1.0", "0.1.1")
    assert not version_at_least("1.9", "1.10")
    with pytest.raises(ValueError, match="numeric"):
        parse_version("latest")


def test_build_and_verify_a_tiny_model(tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey) -> None:
    built = build_package(rnet_file, "mtcnn-rnet", "rnet", "2.0-ft", 7, keypair, tmp_path / "r.pkg")
    names = [m.name for m in read_members(tmp_path / "r.pkg")]
    assert names == [
        "manifest.json",
        "manifest.sig",
        "payload/model.onnx",
        "payload/reference_inputs.npz",
        "payload/reference_outputs.npz",
    ]
    trusted = {built.key_id: keypair.public_key()}
    package = verify_package(tmp_path / "r.pkg", trusted, active_release=6, firmware_version=__version__)
    manifest = package.manifest
    assert (manifest.kind, manifest.name, manifest.version, manifest.release) == (
        "mtcnn-rnet",
        "rnet",
        "2.0-ft",
        7,
    )
    assert manifest.qualified_version == "mtcnn-rnet@2.0-ft" and not manifest.rollback
    assert [t.describe() for t in manifest.inputs] == ["input_2[?,24,24,3] float32"]
    assert [t.describe() for t in manifest.outputs] == ["dense_2[?,4] float32", "softmax_1[?,2] float32"]
    assert manifest.embedding_size is None and manifest.min_firmware == __version__
    assert manifest.reference is not None and manifest.reference.atol == 0.05
    assert package.model_bytes() == rnet_file.read_bytes()
    reference = package.reference()
    assert reference is not None
    inputs, outputs = reference
    assert inputs["input_2"].shape == (4, 24, 24, 3) and inputs["input_2"].dtype == np.float32
    assert outputs["dense_2"].shape == (4, 4) and outputs["softmax_1"].shape == (4, 2)
    np.testing.assert_allclose(outputs["softmax_1"].sum(axis=1), 1.0, rtol=1e-5)
    spec = package.model_spec()
    assert (spec.name, spec.version, spec.file, spec.sha256) == (
        "mtcnn-rnet",
        "2.0-ft",
        "model.onnx",
        manifest.files["model.onnx"].sha256,
    )
    model_path = package.extract_to(tmp_path / "staged")
    assert model_path == tmp_path / "staged" / "model.onnx"
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == sorted(manifest.files)
    assert model_path.read_bytes() == rnet_file.read_bytes()

    # the reference is reproduced on the CPU back-end from the extracted files
    from engines.backends import open_model

    with open_model("cpu", spec, tmp_path / "staged") as backend:
        check = package.check_backend(backend)
    assert check.ok, check.problems
    assert max(check.max_abs.values()) < 1e-5


def test_read_rechecks_the_file_after_verification(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    path = _build(tmp_path, rnet_file, keypair)
    package = verify_package(path, trusted, active_release=None, firmware_version=__version__)
    offset = package._members["model.onnx"].offset  # white-box: where the model's bytes lie
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError) as caught:
        package.model_bytes()
    assert caught.value.reason == codes.TAMPERED
    with pytest.raises(PackageError):
        package.extract_to(tmp_path / "staged")
    assert not (tmp_path / "staged" / "model.onnx").exists()
    assert not [p for p in (tmp_path / "staged").iterdir() if p.name.startswith(".model")]
    with pytest.raises(UpdateError, match="no file"):
        package.read("../manifest.json")


def test_incompatible_models_are_refused_at_build(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey
) -> None:
    with pytest.raises(PackageError) as caught:  # R-Net's I/O where P-Net's is needed
        _build(tmp_path, rnet_file, keypair, kind="mtcnn-pnet")
    assert caught.value.reason == codes.INCOMPATIBLE and "input_1" in str(caught.value)
    renamed = tmp_path / "renamed.onnx"
    renamed.write_bytes(tiny_rnet(input_name="data"))
    with pytest.raises(PackageError, match="'input_2' is absent") as caught:
        _build(tmp_path, renamed, keypair)
    assert caught.value.reason == codes.INCOMPATIBLE
    wide = tmp_path / "wide.onnx"
    wide.write_bytes(tiny_embedder(dim=512))
    with pytest.raises(PackageError, match="output0") as caught:
        _build(tmp_path, wide, keypair, kind="mobilefacenet")
    assert caught.value.reason == codes.INCOMPATIBLE
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not protobuf" * 10)
    with pytest.raises(PackageError) as caught:
        _build(tmp_path, garbage, keypair)
    assert caught.value.reason == codes.INCOMPATIBLE
    assert not (tmp_path / "out.pkg").exists()


def test_fixed_batch_of_one_is_accepted_where_the_registry_prepares_a_dynamic_batch(
    tmp_path: Path, keypair: Ed25519PrivateKey
) -> None:
    model = tmp_path / "embedder.onnx"
    model.write_bytes(tiny_embedder(batch=1))
    built = build_package(model, "mobilefacenet", "tiny", "1", 1, keypair, tmp_path / "e.pkg")
    assert built.manifest.embedding_size == 128
    assert built.manifest.inputs[0].shape == (1, 3, 112, 112)
    assert built.manifest.reference is not None and built.manifest.reference.min_cosine == 0.98
    reference = built.reference()
    assert reference is not None and reference[1]["output0"].shape == (4, 128)
    # a fixed batch of 2 is not something the preparation can make dynamic
    two = tmp_path / "two.onnx"
    two.write_bytes(tiny_embedder(batch=2))
    with pytest.raises(PackageError, match="fixes axis 0 to 2") as caught:
        build_package(two, "mobilefacenet", "tiny", "1", 1, keypair, tmp_path / "two.pkg")
    assert caught.value.reason == codes.INCOMPATIBLE


def test_reference_faces_and_given_inputs(tmp_path: Path, keypair: Ed25519PrivateKey) -> None:
    model = tmp_path / "embedder.onnx"
    model.write_bytes(tiny_embedder(batch=None))
    crops = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    built = build_package(
        model, "mobilefacenet", "t", "1", 1, keypair, tmp_path / "f.pkg", reference_faces=crops
    )
    reference = built.reference()
    assert reference is not None
    from engines.registry import get_model

    np.testing.assert_array_equal(
        reference[0]["input0"], get_model("mobilefacenet").preprocessing.to_blob(crops)
    )
    given = {"input0": np.ones((2, 3, 112, 112), np.float32)}
    built = build_package(
        model, "mobilefacenet", "t", "1", 1, keypair, tmp_path / "g.pkg", reference_inputs=given, atol=1e-4
    )
    reference = built.reference()
    assert reference is not None and reference[0]["input0"].shape == (2, 3, 112, 112)
    assert built.manifest.reference is not None
    assert (built.manifest.reference.atol, built.manifest.reference.min_cosine) == (1e-4, None)
    with pytest.raises(UpdateError, match="reference inputs"):
        build_package(
            model,
            "mobilefacenet",
            "t",
            "1",
            1,
            keypair,
            tmp_path / "h.pkg",
            reference_inputs={"x": given["input0"]},
        )
    with pytest.raises(UpdateError, match="uint8"):
        build_package(
            model,
            "mobilefacenet",
            "t",
            "1",
            1,
            keypair,
            tmp_path / "h.pkg",
            reference_faces=crops[:, :80, :80],
        )
    none = build_package(model, "mobilefacenet", "t", "1", 1, keypair, tmp_path / "n.pkg", reference=False)
    assert none.manifest.reference is None and none.reference() is None
    assert sorted(none.manifest.files) == ["model.onnx"]


def test_calibration_cache_travels_with_the_model(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    cache = tmp_path / "rnet.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\ninput_2: 3c010a14\n")
    path = _build(tmp_path, rnet_file, keypair, calibration=cache)
    package = verify_package(path, trusted, active_release=None, firmware_version=__version__)
    assert package.manifest.calibration_file == "calibration.cache"
    assert package.calibration_bytes() == cache.read_bytes()


def _manifest_dict(tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey) -> Dict[str, object]:
    path = _build(tmp_path, rnet_file, keypair)
    return json.loads(read_members(path)[0].data)


def test_manifest_schema_is_strict(tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey) -> None:
    good = _manifest_dict(tmp_path, rnet_file, keypair)
    manifest = parse_manifest(json.dumps(good).encode())
    assert parse_manifest(manifest.to_bytes()) == manifest

    def refused(document: object, raw: bytes = b"") -> str:
        with pytest.raises(PackageError) as caught:
            parse_manifest(raw or json.dumps(document).encode())
        assert caught.value.reason == codes.MALFORMED
        return str(caught.value)

    assert "surprise" in refused({**good, "surprise": 1})
    assert "release" in refused({**good, "release": "7"})  # no coercion of strings
    assert "release" in refused({**good, "release": 0})
    assert "schema" in refused({**good, "schema": 2})
    assert "created" in refused({**good, "created": "yesterday"})
    assert "min_firmware" in refused({**good, "min_firmware": "1.x"})
    assert "files" in refused(
        {**good, "files": {**good["files"], "extra.bin": {"size": 1, "sha256": "0" * 64}}}
    )  # type: ignore[dict-item]
    assert "not allowed" in refused({**good, "files": {"../model.onnx": {"size": 1, "sha256": "0" * 64}}})
    assert "version" in refused({**good, "version": "2 beta"})
    assert "duplicate" in refused(None, b'{"schema": 1, "schema": 1}')
    assert "JSON" in refused(None, json.dumps(good).replace('"release": 2', '"release": NaN').encode())
    assert "JSON" in refused(None, b"\xff\xfe")


def test_compatibility_rules(tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey) -> None:
    good = _manifest_dict(tmp_path, rnet_file, keypair)
    assert compatibility_problems(Manifest.model_validate_json(json.dumps(good))) == []

    def problems(**changes: object) -> str:
        return "; ".join(
            compatibility_problems(Manifest.model_validate_json(json.dumps({**good, **changes})))
        )

    assert "unknown kind" in problems(kind="arcface")
    pre = dict(good["preprocessing"])  # type: ignore[arg-type]
    assert "preprocessing.color" in problems(preprocessing={**pre, "color": "BGR"})
    assert "input_size" in problems(preprocessing={**pre, "input_size": [32, 32]})
    # the pipeline pre-processes with the registry's numbers, so a package cannot change them
    assert "preprocessing.mean" in problems(preprocessing={**pre, "mean": [0.0, 0.0, 0.0]})
    assert problems(preprocessing=pre) == ""
    outputs = [dict(o) for o in good["outputs"]]  # type: ignore[attr-defined]
    outputs[0]["shape"] = [None, 5]
    assert "dense_2" in problems(outputs=outputs)
    assert "embedding_size" in problems(embedding_size=128)
    inputs, _ = read_onnx_io(tiny_rnet())
    assert inputs[0].shape == (None, 24, 24, 3)


def test_compare_reference() -> None:
    expected = {"out": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}
    close = {"out": expected["out"] + 0.01}
    assert compare_reference(expected, close, atol=0.05, min_cosine=None).ok
    far = compare_reference(expected, close, atol=0.001, min_cosine=None)
    assert not far.ok and "differs by up to 0.01" in far.problems[0]
    turned = {"out": np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)}
    check = compare_reference(expected, turned, atol=None, min_cosine=0.9)
    assert not check.ok and check.min_cosine["out"] == pytest.approx(0.0)
    assert not compare_reference(expected, {"out": np.full((2, 2), np.nan, np.float32)}, 10.0, None).ok
    assert not compare_reference(expected, {"other": expected["out"]}, 1.0, None).ok
    assert not compare_reference(expected, {"out": expected["out"][:1]}, 1.0, None).ok


# -- structural refusals (the real-model matrix is in the integration tests) ------------------------


def test_structural_refusals(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    path = _build(tmp_path, rnet_file, keypair)
    members = read_members(path)
    manifest = json.loads(members[0].data)

    def variant(name: str, items: list) -> Path:
        return write_members(tmp_path / name, items)

    cases = {
        "not_tar": (tmp_path / "not.tar", codes.MALFORMED),
        "empty": (tmp_path / "empty.pkg", codes.TRUNCATED),
        "unsigned": (variant("unsigned.pkg", [members[0], *members[2:]]), codes.NO_SIGNATURE),
        "sig_only_manifest": (variant("lonely.pkg", [members[0]]), codes.NO_SIGNATURE),
        "wrong_first": (variant("order.pkg", [members[1], members[0], *members[2:]]), codes.MALFORMED),
        "missing_payload": (variant("missing.pkg", members[:3]), codes.TAMPERED),
        "extra_member": (
            variant("extra.pkg", [*members, Member("payload/extra.bin", b"x")]),
            codes.MALFORMED,
        ),
        "directory": (
            variant("dir.pkg", [*members[:2], Member("payload", type=tarfile.DIRTYPE), *members[2:]]),
            codes.MALFORMED,
        ),
        "hardlink": (
            variant(
                "hard.pkg", [*members, Member("payload/x", type=tarfile.LNKTYPE, linkname="manifest.json")]
            ),
            codes.MALFORMED,
        ),
        "device": (
            variant("dev.pkg", [*members, Member("payload/null", type=tarfile.CHRTYPE)]),
            codes.MALFORMED,
        ),
        "absolute": (variant("abs.pkg", [*members, Member("/etc/cron.d/x", b"x")]), codes.MALFORMED),
        "dot": (
            variant("dot.pkg", [*members[:2], Member("./payload/model.onnx", members[2].data), *members[3:]]),
            codes.MALFORMED,
        ),
        "resigned_wrong_size": (
            variant(
                "size.pkg",
                resign(
                    members,
                    keypair,
                    {
                        **manifest,
                        "files": {
                            **manifest["files"],
                            "model.onnx": {**manifest["files"]["model.onnx"], "size": 5},
                        },
                    },
                ),
            ),
            codes.TAMPERED,
        ),
    }
    (tmp_path / "not.tar").write_bytes(b"PK\x03\x04" + b"\x00" * 2000)
    (tmp_path / "empty.pkg").write_bytes(b"")
    for label, (candidate, reason) in cases.items():
        err = _refusal(candidate, trusted)
        assert err.reason == reason, f"{label}: {err.reason}: {err}"
    absent = _refusal(tmp_path / "absent.pkg", trusted)
    assert absent.reason == codes.UNREADABLE
    assert _refusal(path, trusted, firmware_version="0.0.1").reason == codes.FIRMWARE_TOO_OLD
    assert _refusal(path, trusted, max_size=1000).reason == codes.TOO_LARGE
    assert _refusal(path, {}).reason == codes.UNKNOWN_KEY


def test_package_error_keeps_its_reason_through_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(PackageError("bad", reason=codes.BAD_SIGNATURE)))
    assert isinstance(err, PackageError) and err.reason == codes.BAD_SIGNATURE and str(err) == "bad"
    assert codes.PACKAGE_REASONS >= {"no_signature", "bad_signature", "unknown_key", "tampered", "truncated"}


def test_mutated_packages_are_refused_or_carry_the_signed_bytes(
    tmp_path: Path, rnet_file: Path, keypair: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    """Seeded mutations (byte flips, cuts, insertions, appended data) of a real package: each one is
    refused with a PackageError, or verifies to exactly the signed payload (a flip in tar padding)."""
    path = _build(tmp_path, rnet_file, keypair)
    original = path.read_bytes()
    signed = verify_package(path, trusted, active_release=None, firmware_version=__version__)
    files = {name: signed.read(name) for name in signed.manifest.files}
    rng = np.random.default_rng(20240501)
    candidate = tmp_path / "mutant.pkg"
    refused: Dict[str, int] = {}
    for round_number in range(300):
        data = bytearray(original)
        operation = round_number % 4
        position = int(rng.integers(0, len(data)))
        if operation == 0:
            data[position] ^= int(rng.integers(1, 256))
        elif operation == 1:
            del data[position:]
        elif operation == 2:
            data[position:position] = (
                rng.integers(0, 256, int(rng.integers(1, 600))).astype(np.uint8).tobytes()
            )
        else:
            data += rng.integers(0, 256, int(rng.integers(1, 2000))).astype(np.uint8).tobytes()
        candidate.write_bytes(bytes(data))
        try:
            accepted = verify_package(candidate, trusted, active_release=None, firmware_version=__version__)
        except PackageError as err:
            refused[err.reason] = refused.get(err.reason, 0) + 1
            continue
        assert {name: accepted.read(name) for name in accepted.manifest.files} == files
        assert accepted.manifest == signed.manifest
    assert sum(refused.values()) > 200
    assert set(refused) <= codes.PACKAGE_REASONS
