"""Fuzzing at scale: a million inputs per parser, in worker processes, with the oracles of tests/fuzz.

    python -m bench.reliability.fuzz [--inputs 1000000] [--workers 2] [--atheris-s 60]
                                     [--only config commands images bundle packages uds] [--json OUT]
    python -m bench.reliability.fuzz --replay LANE SEED INDEX

The CI fuzz targets (``tests/fuzz``) draw their inputs with hypothesis, which spends about a
millisecond per example on drawing alone. Here each target is a set of *lanes*: a seeded generator
that makes the same kinds of inputs as the CI target (the mutations of ``tests/fuzz/test_fuzz_*.py``,
rewritten on :class:`random.Random`), and the CI target's own oracle (``_check_outcome``,
``_check_parse``, ``_check``, ``_check_parsed``, …), which accepts a result or the parser's
documented error class and raises ``AssertionError`` for anything it must not do. An exception of
another class is a **crash**; an ``AssertionError`` a **violation**; an input that takes longer than
:data:`HANG_S` a **hang** (and a worker stuck on one input for :data:`STUCK_S` is killed and counted
as one). Input ``INDEX`` of a chunk seeded ``SEED`` is made from ``Random(f"{SEED}:{INDEX}")``, so
``--replay`` makes it again.

Where ``atheris`` is installed, each target first gets ``--atheris-s`` seconds of coverage-guided
fuzzing (libFuzzer; the appliance's, engines' and tomllib's Python code instrumented) on the same
oracle, seeded with the lanes' seed inputs; its executions are reported apart from the seeded
inputs. It pays where the parser is Python (the UDS service, the image header readers, TOML, the
bundle and manifest field checks); JSON decoding, pydantic-core and the OpenCV decoders are native
code it cannot see into, so there the seeded lanes do the work.

What is cheap and what is not (measured, one core): the command parser and the UDS service take
~10⁵ inputs/s, the manifest parser ~5·10⁴/s, small images ~3·10⁴/s, bundle contents ~10⁴/s (refused
at the JSON stage; a whole valid document with crops ~2·10³/s), config files ~3·10³/s, a package
verified from its file ~10³/s, a real photo decoded ~250/s, and a sealed bundle ~13/s (scrypt). The
lanes' shares (:data:`LANES`) spend the inputs accordingly: the expensive paths get fewer, and the
sealed-bundle lanes memoise the scrypt key per salt (the key derivation is the same function of the
same inputs, so only its cost changes). ``python -m bench.reliability`` runs this as its second part.
"""

from __future__ import annotations

import argparse
import base64
import copy
import functools
import importlib
import json
import logging
import math
import multiprocessing
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
#: An input slower than this is counted as a hang (the per-input time bound).
HANG_S = 5.0
#: A worker stuck on one input this long is killed; the input counts as a hang.
STUCK_S = 60.0
#: Inputs per task handed to a worker.
CHUNK = 4000
#: Failures kept per lane in the report (all are counted).
KEPT = 10
#: The longest input the coverage-guided phase makes (bytes).
MAX_LEN = 128 * 1024
TARGETS = ("config", "commands", "images", "bundle", "packages", "uds")


def _shared() -> Path:
    return Path(os.environ.get("FACE_APPLIANCE_SHARED", REPO.parent / "shared"))


# -- generators shared by the lanes ----------------------------------------------------------------------

_ODD_TEXT = [
    "",
    "\x00",
    "\ud800",
    "é" * 300,
    "A" * 300,
    "/dev/zero",
    "..",
    "a\nb",
    "\u202e",
    "${X}/y",
    "0x10",
]


def _text(rng: random.Random, limit: int = 40) -> str:
    if rng.random() < 0.2:
        return rng.choice(_ODD_TEXT)
    alphabet = rng.choice(["abcxyz019_-.@ ", "\x00\x1b\r\n\t\u202e\u0085é漢\U0001f600", '{}[]":,\\'])
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, limit)))


def _number(rng: random.Random) -> Any:
    return rng.choice(
        [
            rng.randint(-(2**63), 2**63 - 1),
            rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64]),
            rng.uniform(-1e6, 1e6),
            rng.choice([0.0, -0.0, 1e-9, 5e-324, 1e308, math.inf, -math.inf, math.nan, 0.5, 2.0]),
        ]
    )


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, with awkward ones well represented (as the tests' ``_json`` strategy)."""
    kind = rng.randrange(8 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind in (2, 3):
        return _number(rng)
    if kind in (4, 5):
        return _text(rng)
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng, 12): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _flip(data: bytes, rng: random.Random, window: Optional[int] = None) -> bytes:
    """Up to 8 bytes replaced (within the first ``window`` bytes when given)."""
    if not data:
        return data
    mutable = bytearray(data)
    span = len(mutable) if window is None else min(len(mutable), window)
    for _ in range(rng.randint(1, 8)):
        mutable[rng.randrange(span)] = rng.randrange(256)
    return bytes(mutable)


def _byte_mutation(data: bytes, rng: random.Random) -> bytes:
    """A truncation, flips, an insertion, a deletion or appended bytes."""
    action = rng.randrange(5)
    position = rng.randint(0, len(data))
    if action == 0:
        return data[:position]
    if action == 1:
        return _flip(data, rng)
    if action == 2:
        return data[:position] + rng.randbytes(rng.randint(1, 64)) + data[position:]
    if action == 3:
        return data[:position] + data[position + rng.randint(1, 600) :]
    return data + rng.randbytes(rng.randint(1, 2000))


def _structural(
    document: Any, rng: random.Random, paths: List[Tuple[Any, ...]], specials: Sequence[Any]
) -> Any:
    """1–3 mutations of a parsed document: a value replaced (any JSON, or a special value), a key
    deleted or added, a list item duplicated (the tests' ``_mutated`` strategies)."""
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        if not path:
            return _json_value(rng)
        parent = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            leaf = path[-1]
            action = rng.randrange(5)
            if action == 0:
                parent[leaf] = _json_value(rng)
            elif action == 1:
                parent[leaf] = rng.choice(specials)
            elif action == 2:
                del parent[leaf]
            elif action == 3 and isinstance(parent, dict):
                parent[_text(rng, 8)] = _json_value(rng)
            elif action == 4 and isinstance(parent, list):
                parent.append(copy.deepcopy(parent[leaf]))
        except (KeyError, IndexError, TypeError):
            continue
    return document


# -- lanes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """One generator with its oracle. ``run(context, rng)`` makes one input from ``rng``, checks it
    (raising on a violation or a crash) and returns how many parser inputs it was (a UDS sequence
    counts its requests)."""

    name: str
    target: str
    #: Share of the target's inputs.
    share: float
    setup: Callable[[Path], Any]
    run: Callable[[Any, random.Random], int]
    #: Seed inputs (bytes) for the coverage-guided phase, from the context.
    seeds: Optional[Callable[[Any], List[bytes]]] = None
    #: Parser inputs per run, on average (sequences of requests, bursts of commands).
    per_run: float = 1.0


# config ----------------------------------------------------------------------------------------------------


def _config_setup(folder: Path) -> Dict[str, Any]:
    from tests.fuzz import test_fuzz_config as cfg

    return {
        "cfg": cfg,
        "original": cfg.DOCUMENTED.read_bytes(),
        "document": cfg._documented(),
        "file": folder / "appliance.toml",
        "folder": folder,
    }


def _toml_text(rng: random.Random, limit: int = 40) -> str:
    """Text TOML can hold: no lone surrogates (tomllib never gives one)."""
    return _text(rng, limit).encode("utf-8", "replace").decode("utf-8")


def _toml_value(rng: random.Random, depth: int = 0) -> Any:
    """A value TOML can express (as ``_toml_values`` of the config fuzz test)."""
    import datetime

    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return rng.choice([rng.randint(-(2**63), 2**63 - 1), 0, -1, 1, 2**31, 2**63 - 1, -(2**63)])
    if kind == 1:
        return rng.choice([rng.uniform(-1e9, 1e9), math.nan, math.inf, -math.inf, 5e-324, 0.0, 1e308])
    if kind == 2:
        return rng.random() < 0.5
    if kind in (3, 4):
        return rng.choice(
            ["", "\x00", "/dev/zero", "..", "${CREDENTIALS_DIRECTORY}/x", "a" * 5000, "é/ü", _toml_text(rng)]
        )
    if kind == 5:
        return rng.choice(
            [
                datetime.datetime(2024, 1, 2, 3, 4, 5),
                datetime.date(1, 1, 1),
                datetime.time(23, 59, 59),
                datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc),
            ]
        )
    if kind == 6:
        return _toml_text(rng, 12)
    if kind == 7:
        return [_toml_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_toml_text(rng, 12): _toml_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _config_tables(context: Dict[str, Any], rng: random.Random) -> int:
    cfg = context["cfg"]
    document = copy.deepcopy(context["document"])
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(cfg._DOCUMENTED_PATHS)
        parent: Any = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = rng.randrange(3)
            if action == 0:
                parent[path[-1]] = _toml_value(rng)
            elif action == 1:
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[_toml_text(rng, 12) or "k"] = _toml_value(rng)
        except (KeyError, IndexError, TypeError):
            continue
    from appliance.config_load import validate_config

    cfg._check_outcome(lambda: validate_config(document, base_dir=context["folder"]), False)
    return 1


def _config_bytes(context: Dict[str, Any], rng: random.Random) -> int:
    from appliance.config_load import load_config

    cfg = context["cfg"]
    original = context["original"]
    edits = []
    for _ in range(rng.randint(1, 6)):
        insert = (
            rng.randbytes(rng.randint(0, 16))
            if rng.random() < 0.6
            else rng.choice(
                [
                    b"=",
                    b"[",
                    b"]",
                    b'"',
                    b"\n[x]\n",
                    b"\xff",
                    b"\xef\xbb\xbf",
                    b"[mqtt]\n",
                    b"'''",
                    b"\\u0000",
                ]
            )
        )
        edits.append((rng.randint(0, len(original)), rng.randint(0, 64), insert))
    context["file"].write_bytes(cfg._mutate_bytes(original, edits))
    cfg._check_outcome(lambda: load_config(context["file"]), True)
    return 1


def _config_text(context: Dict[str, Any], rng: random.Random) -> int:
    from appliance.config_load import load_config

    if rng.random() < 0.5:
        context["file"].write_text(_text(rng, 400), encoding="utf-8", errors="surrogatepass")
    else:
        context["file"].write_bytes(rng.randbytes(rng.randint(0, 400)))
    context["cfg"]._check_outcome(lambda: load_config(context["file"]), True)
    return 1


# commands --------------------------------------------------------------------------------------------------


def _commands_setup(folder: Path) -> Dict[str, Any]:
    from appliance.commands import COMMANDS
    from tests.fuzz import test_fuzz_commands as cmd

    return {
        "cmd": cmd,
        "names": sorted(COMMANDS),
        "fields": {name: sorted(model.model_fields) for name, model in COMMANDS.items()},
    }


_FIELD_VALUES: Dict[str, Callable[[random.Random], Any]] = {
    "request_id": lambda rng: _text(rng, 140) if rng.random() < 0.7 else _json_value(rng),
    "name": lambda rng: _text(rng, 210),
    "image": lambda rng: rng.choice(["", "AAAA", "!!!!", "iVBORw0KGgo=", "/9j/4AAQ", _text(rng)]),
    "id": lambda rng: rng.choice(["obama", "nobody", "../x", "a" * 64, _text(rng, 70)]),
    "external_id": lambda rng: _text(rng, 210),
    "consent_at": lambda rng: rng.choice(["2024-01-01T00:00:00Z", "2024-13-01", "", _text(rng, 45)]),
    "face": lambda rng: rng.randint(-5, 200),
    "threshold": lambda rng: rng.choice([0.0, 1.0, 1e-9, 0.5, 2.0, 5e-324, math.nan, rng.random()]),
    "ts": lambda rng: rng.choice(
        ["2024-01-01T00:00:00Z", "2999-01-01T00:00:00+00:00", "yesterday", _text(rng, 30)]
    ),
}


def _command_seeds(context: Dict[str, Any]) -> List[bytes]:
    return [payload for _, payload in context["cmd"]._REGRESSIONS] + [
        b'{"request_id": "r", "name": "x", "image": "AAAA"}'
    ]


def _parse(context: Dict[str, Any], rng: random.Random) -> int:
    names = context["names"]
    kind = rng.randrange(10)
    if kind == 0:
        name, payload = rng.choice(context["cmd"]._REGRESSIONS)
    elif kind < 3:
        name, payload = rng.choice([*names, _text(rng, 12)]), rng.randbytes(rng.randint(0, 300))
    elif kind < 5:
        name, payload = rng.choice(names), _dumps(_json_value(rng))
    else:  # near-valid: the command's own fields, some wrong, some extra
        name = rng.choice(names) if rng.random() < 0.95 else _text(rng, 12)
        document: Dict[str, Any] = {}
        for key in context["fields"].get(name, ["request_id"]):
            if rng.random() < 0.8:
                document[key] = (
                    _FIELD_VALUES.get(key, _json_value)(rng) if rng.random() < 0.85 else _json_value(rng)
                )
        if rng.random() < 0.3:
            document[_text(rng, 10)] = _json_value(rng)
        payload = _dumps(document)
        if rng.random() < 0.1:
            payload = _flip(payload, rng)
    context["cmd"]._check_parse(name, payload)
    return 1


def _commands_burst(context: Dict[str, Any], rng: random.Random) -> int:
    """The live-daemon burst's own seeded generator (``_burst``), checked against the parser."""
    burst = context["cmd"]._burst(rng.randrange(2**31), 16)[len(context["cmd"]._REGRESSIONS) :]
    for name, payload in burst:
        context["cmd"]._check_parse(name, payload)
    return len(burst)


# images ----------------------------------------------------------------------------------------------------


def _images_setup(folder: Path) -> Dict[str, Any]:
    from tests.fuzz import test_fuzz_images as img

    seeds = img._seeds(_shared() / "data")
    photos = [(_shared() / "data" / path).read_bytes() for path in img.SHARED_PHOTOS]
    small = [seed for seed in seeds if seed not in photos]
    return {"img": img, "small": small, "photos": photos}


def _image_mutation(context: Dict[str, Any], data: bytes, rng: random.Random) -> bytes:
    action = rng.randrange(6)
    if action == 0:
        return data[: rng.randint(0, len(data))]
    if action == 1:
        return _flip(data, rng, 4096)
    if action == 2:
        position = rng.randint(0, min(len(data), 4096))
        return data[:position] + rng.randbytes(rng.randint(1, 64)) + data[position:]
    if action == 3:
        side = lambda: rng.choice(context["img"].ODD_SIDES) if rng.random() < 0.5 else rng.randrange(2**32)  # noqa: E731
        return context["img"]._patch_dimensions(data, side(), side())
    if action == 4:
        return rng.choice(context["img"].MAGIC_NUMBERS) + rng.randbytes(rng.randint(0, 200))
    return rng.randbytes(rng.randint(0, 300))


def _images_small(context: Dict[str, Any], rng: random.Random) -> int:
    context["img"]._check(_image_mutation(context, rng.choice(context["small"]), rng))
    return 1


def _images_photos(context: Dict[str, Any], rng: random.Random) -> int:
    context["img"]._check(_image_mutation(context, rng.choice(context["photos"]), rng))
    return 1


# bundle ----------------------------------------------------------------------------------------------------


def _bundle_setup(folder: Path) -> Dict[str, Any]:
    """A real bundle (two identities, one with crops, one of an older model), its decrypted document,
    and a gallery to import into; the scrypt key memoised per (passphrase, salt)."""
    import numpy as np

    from appliance.gallery import bundle
    from appliance.gallery.store import TemplateStore
    from tests.fuzz import test_fuzz_bundle as bun

    if not hasattr(bundle._key, "cache_info"):
        bundle._key = functools.lru_cache(maxsize=64)(bundle._key)
    rng = np.random.default_rng(1)
    crop = np.full((112, 112, 3), 128, np.uint8)
    crop[20:90, 30:80] = rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)
    with TemplateStore.open(folder / "source.db", folder / "source.key") as store:
        store.add(
            "ada", "Ada Lovelace", bun.MODEL, np.stack([bun._unit(rng, bun.DIM)] * 2), np.stack([crop, crop])
        )
        store.add("grace", "Grace Hopper", bun.OLD_MODEL, bun._unit(rng, 64)[None], None, [0.5])
        sealed = bundle.export_bundle(store, bun.PASSPHRASE)
    header = len(bundle.MAGIC) + bundle.SALT_BYTES + bundle.NONCE_BYTES
    salt = sealed[len(bundle.MAGIC) : len(bundle.MAGIC) + bundle.SALT_BYTES]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    payload = AESGCM(bundle._key(bun.PASSPHRASE, salt)).decrypt(
        sealed[header - bundle.NONCE_BYTES : header], sealed[header:], bundle.MAGIC
    )
    document = json.loads(payload)
    other_dim = base64.b64encode(bun._unit(rng, 96).astype("<f4").tobytes()).decode()
    specials = [
        other_dim,
        base64.b64encode(bun.png_bomb(30_000, 30_000)).decode(),
        "AAAAAA==",
        "////",
        1e308,
        math.nan,
        -1,
        [],
    ]
    target = bun._open(folder / "target")
    target.add("obama", "Barack Obama", bun._unit(rng, bun.DIM)[None])
    # One salt for the sealed mutations: the memoised key is derived once.
    fixed_salt = os.urandom(bundle.SALT_BYTES)
    return {
        "bun": bun,
        "bundle": bundle,
        "sealed": sealed,
        "payload": payload,
        "document": document,
        "paths": bun._paths(document),
        "specials": specials,
        "target": target,
        "folder": folder,
        "salt": fixed_salt,
    }


def _bundle_parse(context: Dict[str, Any], rng: random.Random) -> int:
    kind = rng.randrange(10)
    if kind < 3:
        payload = _dumps(_structural(context["document"], rng, context["paths"], context["specials"]))
    elif kind < 9:
        payload = _byte_mutation(context["payload"], rng)
    else:
        payload = rng.randbytes(rng.randint(0, 200))
    context["bun"]._check_parsed(payload)
    return 1


def _seal(context: Dict[str, Any], document: Any) -> bytes:
    bundle, bun = context["bundle"], context["bun"]
    nonce = os.urandom(bundle.NONCE_BYTES)
    key = bundle._key(bun.PASSPHRASE, context["salt"])
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return bundle.MAGIC + context["salt"] + nonce + AESGCM(key).encrypt(nonce, _dumps(document), bundle.MAGIC)


def _bundle_sealed_bytes(context: Dict[str, Any], rng: random.Random) -> int:
    """Mutated sealed bytes: refused as a whole (bad magic, short, the tag does not verify)."""
    from appliance.gallery.errors import BundleError

    data = _byte_mutation(context["sealed"], rng)
    if data == context["sealed"]:
        return 1
    try:
        context["bundle"].read_bundle(data, context["bun"].PASSPHRASE)
    except BundleError as err:
        assert str(err)
        return 1
    raise AssertionError("a mutated sealed bundle was read")


def _bundle_import(context: Dict[str, Any], rng: random.Random) -> int:
    """A mutated document sealed and imported into a live gallery: imported whole, or refused with
    the gallery unchanged (the import test's oracle)."""
    from appliance.gallery.errors import GalleryError

    bun, target = context["bun"], context["target"]
    document = _structural(context["document"], rng, context["paths"], context["specials"])
    before = bun._state(target)
    try:
        target.import_bundle(_seal(context, document), bun.PASSPHRASE, replace=True)
    except GalleryError as err:
        assert str(err)
        assert bun._state(target) == before, "a refused import changed the gallery"
    else:
        kept = {identity.id for identity in target.identities()}
        assert {identity.id for identity in before[1]} <= kept, "an import lost an identity"
    if rng.random() < 0.05:
        bun._consistent(target, context["folder"] / "target")
    return 1


# packages --------------------------------------------------------------------------------------------------


def _packages_setup(folder: Path) -> Dict[str, Any]:
    import tarfile

    from appliance import __version__
    from appliance.updates.keys import generate_keypair, key_id, load_private_key
    from appliance.updates.package import build_package, verify_package
    from tests.package_tools import read_members, tiny_rnet

    pair = generate_keypair(folder / "keys", "bench")
    key = load_private_key(pair.private_path)
    trusted = {key_id(key.public_key()): key.public_key()}
    model = folder / "rnet.onnx"
    model.write_bytes(tiny_rnet())
    package = folder / "rnet.pkg"
    build_package(model, "mtcnn-rnet", "rnet", "2", 2, key, package)
    signed = verify_package(package, trusted, active_release=None, firmware_version=__version__)
    with tarfile.open(package) as archive:
        stream = archive.extractfile("manifest.json")
        manifest = stream.read() if stream else b""
    document = json.loads(manifest)
    from tests.fuzz.test_fuzz_bundle import _paths

    return {
        "key": key,
        "trusted": trusted,
        "original": package.read_bytes(),
        "files": {name: signed.read(name) for name in signed.manifest.files},
        "signed_manifest": signed.manifest,
        "manifest": manifest,
        "document": document,
        "paths": _paths(document),
        "members": read_members(package),
        "candidate": folder / "mutant.pkg",
        "version": __version__,
    }


def _verify_outcome(context: Dict[str, Any], data: bytes, same_signed: bool) -> None:
    """Refused with a documented reason, or verified to exactly the signed payload."""
    from appliance.updates import errors as codes
    from appliance.updates.errors import PackageError
    from appliance.updates.package import verify_package

    context["candidate"].write_bytes(data)
    try:
        accepted = verify_package(
            context["candidate"], context["trusted"], active_release=None, firmware_version=context["version"]
        )
    except PackageError as err:
        assert err.reason in codes.PACKAGE_REASONS, err.reason
        return
    if same_signed:
        assert accepted.manifest == context["signed_manifest"], (
            "a mutated package verified to another manifest"
        )
        assert {name: accepted.read(name) for name in accepted.manifest.files} == context["files"]


def _packages_bytes(context: Dict[str, Any], rng: random.Random) -> int:
    _verify_outcome(context, _byte_mutation(context["original"], rng), True)
    return 1


def _packages_resigned(context: Dict[str, Any], rng: random.Random) -> int:
    """A structurally mutated manifest, signed by the trusted key: past the signature, into the
    manifest schema, the compatibility rules and the payload checks."""
    from tests.package_tools import resign, write_members

    specials = ["../x", "/etc/passwd", "model.onnx", "a" * 300, -1, 2**63, 1e308, math.nan, "", [], {}]
    document = _structural(context["document"], rng, context["paths"], specials)
    members = resign(
        context["members"], context["key"], document if isinstance(document, dict) else {"x": document}
    )
    write_members(context["candidate"], members)
    _verify_outcome(context, context["candidate"].read_bytes(), False)
    return 1


def _packages_manifest(context: Dict[str, Any], rng: random.Random) -> int:
    from appliance.updates import errors as codes
    from appliance.updates.errors import PackageError
    from appliance.updates.manifest import Manifest, parse_manifest

    if rng.random() < 0.5:
        data = _dumps(
            _structural(context["document"], rng, context["paths"], ["", -1, 2**70, "../x", math.inf, None])
        )
    else:
        data = _byte_mutation(context["manifest"], rng)
    try:
        manifest = parse_manifest(data)
    except PackageError as err:
        assert err.reason in codes.PACKAGE_REASONS, err.reason
        return 1
    assert isinstance(manifest, Manifest)
    return 1


# UDS -------------------------------------------------------------------------------------------------------


class _ErrorCount(logging.Handler):
    """Counts ERROR records (the UDS server logs an exception a service raised, then answers 0x10)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def _uds_setup(folder: Path) -> Dict[str, Any]:
    from appliance.updates.transfer import IncomingPackage
    from tests.fuzz import test_fuzz_uds as uds
    from tests.uds_support import make_config

    errors = _ErrorCount()
    server_log = logging.getLogger("appliance.updates.uds_server")
    server_log.addHandler(errors)
    server_log.setLevel(logging.ERROR)
    config = make_config(folder, {"session_timeout_s": 5.0})
    return {
        "uds": uds,
        "config": config,
        "errors": errors,
        "incoming": lambda: IncomingPackage(config.updates_staging_dir, reserve_bytes=0),
    }


def _uds_service(context: Dict[str, Any]) -> Tuple[Any, Any, Any, Any]:
    from appliance.updates.uds_server import UdsService
    from tests.uds_support import SECRET, RecordingHandler

    incoming = context["incoming"]()
    handler = RecordingHandler(b"\x00" * 32)
    clock = context["uds"].Clock()
    service = UdsService(context["config"], handler, incoming, SECRET.encode(), clock=clock)  # type: ignore[arg-type]
    return service, handler, incoming, clock


def _uds_request(context: Dict[str, Any], rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randint(0, 64))
    return bytes([rng.choice(context["uds"].SERVICES)]) + rng.randbytes(rng.randint(0, 40))


def _uds_answered(context: Dict[str, Any], request: bytes, answer: Any) -> None:
    context["uds"]._check(request, answer)
    if context["errors"].records:
        failure = context["errors"].records[-1]
        context["errors"].records.clear()
        raise RuntimeError(f"the UDS service raised (answered generalReject): {failure}")


def _uds_locked(context: Dict[str, Any], rng: random.Random) -> int:
    """Arbitrary requests, never unlocked: always a well-formed answer, nothing staged or called."""
    service, handler, incoming, clock = _uds_service(context)
    steps = rng.randint(1, 30)
    for _ in range(steps):
        clock.now += rng.uniform(0.0, 8.0)
        request = _uds_request(context, rng)
        _uds_answered(context, request, service.handle(request))
    assert handler.calls == [], handler.calls
    assert incoming.progress().received == 0
    return steps


def _uds_unlocked(context: Dict[str, Any], rng: random.Random) -> int:
    """Unlocked first (programming session, seed and key), then requests of the download services
    with structured and random bodies: always a well-formed answer, no service raises."""
    from appliance.updates.uds_protocol import compute_key
    from tests.uds_support import SECRET

    service, _, _, clock = _uds_service(context)
    service.handle(b"\x10\x02")
    seed = service.handle(b"\x27\x01") or b"\x00\x00"
    service.handle(b"\x27\x02" + compute_key(SECRET.encode(), seed[2:]))
    steps = rng.randint(1, 30)
    counter = 1
    for _ in range(steps):
        clock.now += rng.choice([0.0, 0.01, 1.0, 4.9, 6.0])
        kind = rng.randrange(8)
        if kind == 0:
            size = rng.choice([0, 1, 100, 2**20, 2**32 - 1, rng.randrange(2**32)])
            offset = rng.choice([0, 1, size, rng.randrange(2**32)])
            request = (
                b"\x34\x00"
                + bytes([rng.choice([0x44, 0x33, 0x22, 0x11, 0x00, 0xFF])])
                + offset.to_bytes(4, "big")
                + size.to_bytes(4, "big")
            )
            request = request[: rng.randint(1, len(request))] if rng.random() < 0.2 else request
        elif kind in (1, 2):
            request = (
                b"\x36"
                + bytes([counter if rng.random() < 0.8 else rng.randrange(256)])
                + rng.randbytes(rng.randint(0, 300))
            )
            counter = (counter + 1) & 0xFF
        elif kind == 3:
            request = b"\x37" + rng.randbytes(rng.randint(0, 4))
        elif kind == 4:
            request = (
                b"\x31"
                + bytes([rng.choice([1, 2, 3, 0])])
                + rng.choice([b"\xf0\x00", b"\xf0\x01", b"\xf0\x02", b"\xff\xff"])
                + rng.randbytes(rng.randint(0, 8))
            )
        elif kind == 5:
            request = b"\x2e\xfd" + bytes([rng.randrange(256)]) + rng.randbytes(rng.choice([0, 31, 32, 33]))
        elif kind == 6:
            request = (
                b"\x22"
                + rng.choice([b"\xfd\x00", b"\xfd\x01", b"\xfd\x02", b"\xfd\x06", b"\xf1\x90"])
                + rng.randbytes(rng.randint(0, 4))
            )
        else:
            request = _uds_request(context, rng)
        _uds_answered(context, request, service.handle(request))
    return steps + 3


def _config_seeds(context: Dict[str, Any]) -> List[bytes]:
    return [context["original"]]


def _image_seeds(context: Dict[str, Any]) -> List[bytes]:
    return list(context["small"])


def _bundle_seeds(context: Dict[str, Any]) -> List[bytes]:
    return [context["payload"]]


def _manifest_seeds(context: Dict[str, Any]) -> List[bytes]:
    return [context["manifest"]]


# -- the lanes, by target --------------------------------------------------------------------------------------

LANES: List[Lane] = [
    Lane("config: mutated tables", "config", 0.45, _config_setup, _config_tables),
    Lane("config: mutated file bytes", "config", 0.45, _config_setup, _config_bytes, _config_seeds),
    Lane("config: arbitrary text", "config", 0.10, _config_setup, _config_text),
    Lane(
        "commands: parse (bytes, JSON, near-valid)", "commands", 0.9, _commands_setup, _parse, _command_seeds
    ),
    Lane("commands: live-burst generator", "commands", 0.1, _commands_setup, _commands_burst, per_run=16),
    Lane("images: small seeds (7 formats)", "images", 0.99, _images_setup, _images_small, _image_seeds),
    Lane("images: real photos", "images", 0.01, _images_setup, _images_photos),
    Lane("bundle: parse mutated content", "bundle", 0.988, _bundle_setup, _bundle_parse, _bundle_seeds),
    Lane("bundle: sealed bytes (read_bundle)", "bundle", 0.01, _bundle_setup, _bundle_sealed_bytes),
    Lane("bundle: import mutated (sealed) into a gallery", "bundle", 0.002, _bundle_setup, _bundle_import),
    Lane("packages: manifest parser", "packages", 0.82, _packages_setup, _packages_manifest, _manifest_seeds),
    Lane("packages: mutated package bytes (verify)", "packages", 0.15, _packages_setup, _packages_bytes),
    Lane("packages: re-signed manifests (verify)", "packages", 0.03, _packages_setup, _packages_resigned),
    Lane("uds: arbitrary requests, locked", "uds", 0.5, _uds_setup, _uds_locked, per_run=15.5),
    Lane("uds: download services, unlocked", "uds", 0.5, _uds_setup, _uds_unlocked, per_run=18.5),
]
LANES_BY_NAME = {lane.name: lane for lane in LANES}


# -- running lanes in worker processes ---------------------------------------------------------------------


def _quiet() -> None:
    """Workers log nothing from the parsers (refusals are expected by the million); OpenCV neither."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    logging.getLogger("appliance").setLevel(logging.CRITICAL)
    logging.getLogger("engines").setLevel(logging.CRITICAL)
    try:
        import cv2

        cv2.setLogLevel(0)
    except (ImportError, AttributeError):
        pass


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def _failure(kind: str, lane: Lane, seed: int, index: int, err: BaseException) -> Dict[str, Any]:
    return {
        "kind": kind,
        "lane": lane.name,
        "seed": seed,
        "index": index,
        "error": f"{type(err).__name__}: {str(err)[:500]}",
        "where": traceback.format_exception(type(err), err, err.__traceback__)[-2].strip()[:500],
    }


def run_chunk(
    lane: Lane, context: Any, seed: int, count: int, progress: Optional[Any] = None
) -> Dict[str, Any]:
    """``count`` inputs of ``lane`` made from ``seed``; counts, failures, seconds.

    ``progress``: a shared array ``[input start time, seed, index]`` the parent watches for a worker
    stuck on one input.
    """
    result: Dict[str, Any] = {
        "lane": lane.name,
        "target": lane.target,
        "inputs": 0,
        "runs": 0,
        "crashes": 0,
        "violations": 0,
        "hangs": 0,
        "slowest_s": 0.0,
        "failures": [],
    }
    started = time.perf_counter()
    for index in range(count):
        if progress is not None:
            progress[0], progress[1], progress[2] = time.time(), seed, index
        began = time.perf_counter()
        try:
            result["inputs"] += lane.run(context, _rng(seed, index))
        except AssertionError as err:
            result["violations"] += 1
            if len(result["failures"]) < KEPT:
                result["failures"].append(_failure("violation", lane, seed, index, err))
            result["inputs"] += 1
        except Exception as err:  # a crash: the parser raised something it does not document
            result["crashes"] += 1
            if len(result["failures"]) < KEPT:
                result["failures"].append(_failure("crash", lane, seed, index, err))
            result["inputs"] += 1
        took = time.perf_counter() - began
        result["runs"] += 1
        result["slowest_s"] = max(result["slowest_s"], took)
        if took > HANG_S:
            result["hangs"] += 1
            if len(result["failures"]) < KEPT:
                result["failures"].append(
                    {
                        "kind": "hang",
                        "lane": lane.name,
                        "seed": seed,
                        "index": index,
                        "error": f"took {took:.1f} s",
                    }
                )
    if progress is not None:
        progress[0] = 0.0
    result["seconds"] = time.perf_counter() - started
    return result


def _worker(tasks: Any, results: Any, progress: Any, folder: str) -> None:
    """A worker process: lanes set up once each, then chunks until it gets ``None``."""
    _quiet()
    # libpng and libjpeg write their complaints to fd 2 themselves: a million lines of noise.
    log = os.open(
        os.path.join(folder, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    os.dup2(log, 2)
    sys.path.insert(0, str(REPO))
    contexts: Dict[str, Any] = {}
    while True:
        task = tasks.get()
        if task is None:
            return
        name, seed, count = task
        lane = LANES_BY_NAME[name]
        try:
            if lane.setup not in contexts:
                scratch = Path(tempfile.mkdtemp(prefix="lane-", dir=folder))
                contexts[lane.setup] = lane.setup(scratch)
            results.put(run_chunk(lane, contexts[lane.setup], seed, count, progress))
        except Exception as err:  # the lane's own setup failed: reported, not a parser crash
            results.put(
                {
                    "lane": name,
                    "setup_error": f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}",
                }
            )


class _Pool:
    """Worker processes fed chunks; one stuck on a single input for :data:`STUCK_S` is replaced."""

    def __init__(self, workers: int, folder: Path) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._tasks = self._context.Queue()
        self._results = self._context.Queue()
        self._folder = folder
        self._workers: List[Tuple[Any, Any]] = [self._start() for _ in range(workers)]
        self.stuck: List[Dict[str, Any]] = []

    def _start(self) -> Tuple[Any, Any]:
        progress = self._context.Array("d", 3, lock=False)
        process = self._context.Process(
            target=_worker, args=(self._tasks, self._results, progress, str(self._folder)), daemon=True
        )
        process.start()
        return process, progress

    def run(self, tasks: List[Tuple[str, int, int]], report: Callable[[Dict[str, Any]], None]) -> None:
        for task in tasks:
            self._tasks.put(task)
        pending = len(tasks)
        while pending:
            try:
                result = self._results.get(timeout=1.0)
            except queue.Empty:
                pending -= self._replace_stuck()
                continue
            pending -= 1
            report(result)

    def _replace_stuck(self) -> int:
        replaced = 0
        for number, (process, progress) in enumerate(self._workers):
            began = progress[0]
            if (began and time.time() - began > STUCK_S) or not process.is_alive():
                seed, index = int(progress[1]), int(progress[2])
                process.kill()
                process.join()
                self.stuck.append(
                    {
                        "kind": "hang",
                        "seed": seed,
                        "index": index,
                        "exit": process.exitcode,
                        "error": f"a worker was stuck on one input for {STUCK_S:.0f} s or died",
                    }
                )
                logger.error("fuzz worker stuck or dead at seed %d input %d; replaced", seed, index)
                self._workers[number] = self._start()
                replaced += 1
        return replaced

    def close(self) -> None:
        for _ in self._workers:
            self._tasks.put(None)
        for process, _ in self._workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def plan(inputs: int, targets: Sequence[str], base_seed: int = 1) -> List[Tuple[str, int, int]]:
    """Chunks ``(lane, seed, count)`` that give each target ``inputs`` inputs split by the lanes' shares
    (a lane whose runs are several inputs, :attr:`Lane.per_run`, gets fewer runs)."""
    tasks = []
    for lane in LANES:
        if lane.target not in targets:
            continue
        # Runs of several inputs vary in length: 2 % more of them, so the target reaches its count.
        margin = 1.02 if lane.per_run > 1 else 1.0
        wanted = max(1, math.ceil(inputs * lane.share * margin / lane.per_run))
        chunk = max(1, int(CHUNK // lane.per_run))
        seed = base_seed * 1_000_003 + LANES.index(lane) * 10_007
        while wanted > 0:
            tasks.append((lane.name, seed, min(chunk, wanted)))
            wanted -= chunk
            seed += 1
    # Expensive lanes first, so the two workers finish together.
    order = {"packages": 0, "config": 1, "bundle": 2, "images": 3, "commands": 4, "uds": 5}
    return sorted(tasks, key=lambda task: order[LANES_BY_NAME[task[0]].target])


# -- coverage-guided (atheris) -------------------------------------------------------------------------------


def _atheris_harness(target: str, context: Any) -> Callable[[bytes], None]:
    """The function libFuzzer calls with each input: the target's parser and oracle on those bytes."""
    if target == "config":
        from appliance.config_load import load_config

        def config(data: bytes) -> None:
            context["file"].write_bytes(data)
            context["cfg"]._check_outcome(lambda: load_config(context["file"]), True)

        return config
    if target == "commands":
        names = context["names"] + ["frobnicate", "é"]

        def commands(data: bytes) -> None:
            if data:
                context["cmd"]._check_parse(names[data[0] % len(names)], data[1:])

        return commands
    if target == "images":
        return context["img"]._check
    if target == "bundle":
        return context["bun"]._check_parsed
    if target == "packages":
        from appliance.updates import errors as codes
        from appliance.updates.errors import PackageError
        from appliance.updates.manifest import parse_manifest

        def manifest(data: bytes) -> None:
            try:
                parse_manifest(data)
            except PackageError as err:
                assert err.reason in codes.PACKAGE_REASONS, err.reason

        return manifest

    def uds(data: bytes) -> None:  # requests as (length byte, bytes) pairs; a third byte advances the clock
        service, handler, incoming, clock = _uds_service(context)
        position = 0
        while position < len(data):
            size, advance = data[position], data[position + 1] if position + 1 < len(data) else 0
            request = data[position + 2 : position + 2 + size % 64]
            position += 2 + size % 64
            clock.now += advance / 16.0
            _uds_answered(context, request, service.handle(request))
        assert handler.calls == [], handler.calls
        assert incoming.progress().received == 0

    return uds


def _atheris_seeds(target: str, context: Any) -> List[bytes]:
    seeds: List[bytes] = []
    for lane in LANES:
        if lane.target == target and lane.seeds is not None:
            seeds += lane.seeds(context)
    if target == "uds":
        seeds += [bytes((2, 0, 0x10, 0x02)), bytes((2, 0, 0x27, 0x01, 3, 0, 0x22, 0xFD, 0x00))]
    return seeds


def _atheris_main(target: str, seconds: float, folder: Path) -> None:
    """In its own process (libFuzzer exits it): instrument, set up the target, fuzz for ``seconds``."""
    import atheris

    _quiet()
    with atheris.instrument_imports(include=["appliance", "engines", "tomllib"]):
        for module in ("config", "commands", "images", "bundle", "uds"):  # the oracles import the parsers
            importlib.import_module(f"tests.fuzz.test_fuzz_{module}")
    setup = next(lane.setup for lane in LANES if lane.target == target)
    context = setup(folder / "context")
    corpus = folder / "corpus"
    corpus.mkdir(exist_ok=True)
    seeds = [seed for seed in _atheris_seeds(target, context) if len(seed) <= MAX_LEN]
    for number, seed in enumerate(seeds):
        (corpus / f"seed-{number}").write_bytes(seed)
    longest = max([4096] + [len(seed) for seed in seeds])
    arguments = [
        sys.argv[0],
        f"-max_total_time={max(1, int(seconds))}",
        f"-timeout={int(HANG_S * 2)}",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-max_len={longest}",
        f"-artifact_prefix={folder}/",
        str(corpus),
    ]
    atheris.Setup(arguments, _atheris_harness(target, context))
    atheris.Fuzz()


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(target: str, seconds: float, folder: Path) -> Dict[str, Any]:
    """``seconds`` of coverage-guided fuzzing of ``target`` in a subprocess; its executions and failures."""
    work = folder / f"atheris-{target}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "context").mkdir(exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.reliability.fuzz",
            "--atheris",
            target,
            "--atheris-s",
            str(seconds),
            "--workdir",
            str(work),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        check=False,
    )
    output = done.stdout + done.stderr
    executed = 0
    for line in output.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            executed = int(line.split(":")[-1])
    artifacts = sorted(
        path.name for path in work.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-", "leak-"))
    )
    failures = []
    if done.returncode != 0 or artifacts:
        failures.append(
            {
                "kind": "hang" if any(a.startswith("timeout-") for a in artifacts) else "crash",
                "lane": f"atheris {target}",
                "error": "\n".join(line for line in output.splitlines()[-40:])[-3000:],
                "artifacts": artifacts,
            }
        )
    corpus = len(list((work / "corpus").iterdir())) if (work / "corpus").is_dir() else 0
    return {
        "target": target,
        "inputs": executed,
        "seconds": round(time.monotonic() - started, 1),
        "corpus": corpus,
        "coverage": next(
            (
                line.split(" cov: ")[1].split()[0]
                for line in reversed(output.splitlines())
                if " cov: " in line
            ),
            None,
        ),
        "failures": failures,
        "exit": done.returncode,
    }


# -- the campaign ----------------------------------------------------------------------------------------------


def campaign(
    inputs: int,
    targets: Sequence[str] = TARGETS,
    workers: int = 2,
    atheris_s: float = 0.0,
    seed: int = 1,
) -> Dict[str, Any]:
    """``inputs`` seeded inputs per target, after ``atheris_s`` seconds of coverage-guided fuzzing
    where atheris is installed (its executions are counted apart, in ``coverage_guided``); per target
    and lane: inputs, rate, crashes, violations, hangs."""
    started = time.monotonic()
    report: Dict[str, Any] = {
        "targets": {
            t: {"inputs": 0, "crashes": 0, "violations": 0, "hangs": 0, "seconds": 0.0, "lanes": {}}
            for t in targets
        },
        "failures": [],
        "setup_errors": [],
        "atheris": None,
    }
    # Lanes write a file per input (configs, packages): a RAM disk where there is one.
    folder = Path(
        tempfile.mkdtemp(prefix="bench-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    try:
        if atheris_s > 0 and atheris_available():
            report["atheris"] = {}
            running: List[Tuple[str, Any]] = []
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers) as executor:
                running = [(t, executor.submit(run_atheris, t, atheris_s, folder)) for t in targets]
            for target, future in running:
                result = future.result()
                report["atheris"][target] = result
                entry = report["targets"][target]
                entry["coverage_guided"] = result["inputs"]
                entry["crashes"] += sum(1 for f in result["failures"] if f["kind"] == "crash")
                entry["hangs"] += sum(1 for f in result["failures"] if f["kind"] == "hang")
                report["failures"] += result["failures"]
                logger.info(
                    "atheris %s: %d inputs in %.0f s, coverage %s, corpus %d, %d failure(s)",
                    target,
                    result["inputs"],
                    result["seconds"],
                    result["coverage"],
                    result["corpus"],
                    len(result["failures"]),
                )
        elif atheris_s > 0:
            report["atheris"] = "not installed: seeded mutation only"
        tasks = plan(inputs, targets, seed)
        pool = _Pool(workers, folder)
        done = {"chunks": 0}

        def collect(result: Dict[str, Any]) -> None:
            if "setup_error" in result:
                report["setup_errors"].append(result)
                logger.error(
                    "lane %s could not be set up: %s", result["lane"], result["setup_error"].splitlines()[0]
                )
                return
            entry = report["targets"][result["target"]]
            lane = entry["lanes"].setdefault(
                result["lane"],
                {
                    "inputs": 0,
                    "runs": 0,
                    "crashes": 0,
                    "violations": 0,
                    "hangs": 0,
                    "seconds": 0.0,
                    "slowest_s": 0.0,
                },
            )
            for key in ("inputs", "runs", "crashes", "violations", "hangs", "seconds"):
                lane[key] += result[key]
                if key != "runs":
                    entry[key] += result[key]
            lane["slowest_s"] = max(lane["slowest_s"], result["slowest_s"])
            report["failures"] += result["failures"]
            done["chunks"] += 1
            if done["chunks"] % 25 == 0:
                logger.info(
                    "fuzz: %d of %d chunks, %s",
                    done["chunks"],
                    len(tasks),
                    ", ".join(f"{t} {report['targets'][t]['inputs']}" for t in targets),
                )

        try:
            pool.run(tasks, collect)
        finally:
            pool.close()
        for stuck in pool.stuck:
            report["failures"].append(stuck)
        for lane_figures in (
            lane for entry in report["targets"].values() for lane in entry["lanes"].values()
        ):
            lane_figures["per_s"] = (
                round(lane_figures["runs"] / lane_figures["seconds"]) if lane_figures["seconds"] else None
            )
            lane_figures["seconds"] = round(lane_figures["seconds"], 1)
            lane_figures["slowest_s"] = round(lane_figures["slowest_s"], 3)
        for entry in report["targets"].values():
            entry["seconds"] = round(entry["seconds"], 1)
        report["hangs_unattributed"] = len(pool.stuck)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["workers"] = workers
    report["hang_bound_s"] = HANG_S
    return report


def replay(lane_name: str, seed: int, index: int) -> None:
    """Make input ``index`` of the chunk seeded ``seed`` again and run it with the exception shown."""
    lane = LANES_BY_NAME[lane_name]
    with tempfile.TemporaryDirectory(prefix="fuzz-replay-") as folder:
        context = lane.setup(Path(folder))
        lane.run(context, _rng(seed, index))
    print("no failure")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 10⁶)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--atheris-s", type=float, default=60.0, help="coverage-guided seconds per target (0: none)"
    )
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--replay", nargs=3, metavar=("LANE", "SEED", "INDEX"), default=None)
    parser.add_argument("--atheris", choices=TARGETS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if args.atheris is not None:
        _atheris_main(args.atheris, args.atheris_s, args.workdir)
        return 0
    if args.replay is not None:
        replay(args.replay[0], int(args.replay[1]), int(args.replay[2]))
        return 0
    report = campaign(args.inputs, args.only, args.workers, args.atheris_s)
    for target, entry in report["targets"].items():
        print(
            f"{target}: {entry['inputs']} inputs, {entry['crashes']} crashes, {entry['violations']} violations, "
            f"{entry['hangs']} hangs"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    failed = any(
        entry["crashes"] or entry["violations"] or entry["hangs"] for entry in report["targets"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
