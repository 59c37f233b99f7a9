"""``doctor``: what an installer needs to know before the appliance can run, and what to do about it.

Each check returns :class:`Check` results (ok / warn / fail) with a hint for anything not ok. The
smoke check loads every model the configured pipeline needs on the configured back-end and runs a
batch through it. Where TensorRT runs (a Jetson), the parity check compares the TensorRT pipeline with
the CPU one on a few images (:mod:`appliance.trt_parity`); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from engines.backends import backend_class, backend_status, open_model
from engines.errors import BackendUnavailableError, EngineError
from engines.prepare import compare_batched, load_model_bytes
from engines.registry import MODELS, ModelSpec, required_models
from engines.store import ModelStore
from engines.tensorrt.platform import (
    L4T_JETPACK4,
    LIBNVINFER,
    jetpack4_pieces,
    jetson_release_line,
    l4t_major,
)

from .config import ApplianceConfig
from .config_load import secret_file_warnings
from .door.settings import DEFAULT_DOOR_ID
from .runtime.loading import backend_options, load_analyzer

logger = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
#: Builds TensorRT's bindings and pycuda for Python 3.8 on JetPack 4 (a Nano).
NANO_SCRIPT = "scripts/nano-tensorrt-py38.sh"
PREPARED_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Check:
    """One finding."""

    status: str  # OK, WARN or FAIL
    subject: str
    detail: str
    hint: str = ""


def pipeline_models(config: ApplianceConfig) -> List[ModelSpec]:
    """The models the configured pipeline loads."""
    return required_models(config.detector.type, config.embedder.model, config.liveness.enabled)


def check_platform() -> List[Check]:
    checks = [
        Check(
            OK if sys.version_info >= (3, 8) else FAIL,
            "python",
            platform.python_version(),
            "Python 3.8 or later is needed",
        )
    ]
    release = jetson_release_line()
    checks.append(
        Check(OK, "platform", f"Jetson, {release}" if release else f"{platform.machine()}, not a Jetson")
    )
    checks.extend(check_jetpack4())
    return checks


def check_jetpack4() -> List[Check]:
    """On JetPack 4 (L4T R32, the Nano's last): which piece TensorRT needs under this Python is missing.

    JetPack 4.6 ships Python 3.6 with TensorRT's bindings and pycuda for 3.6 only, and the appliance
    runs on 3.8 or later: without bindings built for this interpreter it runs on the CPU fallback.
    Each piece is a warning (the CPU fallback works); :func:`check_backends` fails when the
    configuration asks for TensorRT.
    """
    if l4t_major() != L4T_JETPACK4:
        return []
    python = platform.python_version()
    build = f"{NANO_SCRIPT} {sys.prefix}"
    checks = [
        Check(
            OK,
            "JetPack 4 python",
            f"{python} in {sys.prefix} (JetPack 4.6's own Python 3.6 cannot run the appliance)",
        )
    ]
    pieces = jetpack4_pieces()
    for module, what in (("tensorrt", "TensorRT's bindings do"), ("pycuda", "pycuda does")):
        reason = pieces[module]
        checks.append(
            Check(OK, f"JetPack 4 {module}", f"{_module_version(module)} imports in Python {python}")
            if reason is None
            else Check(
                WARN,
                f"JetPack 4 {module}",
                f"{what} not import in Python {python}: {reason}",
                f"run {build}",
            )
        )
    reason = pieces[LIBNVINFER]
    checks.append(
        Check(OK, f"JetPack 4 {LIBNVINFER}", "present")
        if reason is None
        else Check(
            WARN,
            f"JetPack 4 {LIBNVINFER}",
            f"TensorRT 8's library is {reason}",
            "install JetPack 4.6.1 or later's TensorRT 8.2: sudo apt install nvidia-tensorrt",
        )
    )
    return checks


def _module_version(name: str) -> Optional[str]:
    try:
        module = importlib.import_module(name)
    except Exception:  # a broken install can raise anything on import
        return None
    return str(getattr(module, "__version__", "installed"))


def _has_gstreamer(build_information: str) -> bool:
    for line in build_information.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def check_packages(config: ApplianceConfig) -> List[Check]:
    checks: List[Check] = []
    for name in ("numpy", "onnx", "pydantic"):
        version = _module_version(name)
        checks.append(
            Check(OK if version else FAIL, name, version or "not importable", "pip install face-appliance")
        )
    cv2_version = _module_version("cv2")
    if cv2_version is None:
        hint = (
            "use JetPack's OpenCV (apt install python3-opencv)"
            if jetson_release_line()
            else "pip install 'face-appliance[cpu]'"
        )
        checks.append(Check(FAIL, "opencv", "cv2 is not importable", hint))
    else:
        import cv2

        gstreamer = _has_gstreamer(cv2.getBuildInformation())
        status = OK if cv2_version.startswith("4.") else WARN
        detail = f"{cv2_version}, GStreamer {'yes' if gstreamer else 'no'}"
        hint = "" if status == OK else "OpenCV 4.x is what the appliance is tested with"
        if jetson_release_line() and not gstreamer:
            status, hint = WARN, "a pip OpenCV shadows JetPack's: pip uninstall opencv-python-headless"
        checks.append(Check(status, "opencv", detail, hint))
    return checks


def check_backends(config: ApplianceConfig) -> List[Check]:
    checks: List[Check] = []
    needed = {config.backend.type}
    if config.backend.type == "tensorrt" and config.backend.fallback == "cpu":
        needed.add("cpu")
    for key, reason in backend_status().items():
        if reason is None:
            checks.append(Check(OK, f"back-end {key}", "importable"))
        elif key == config.backend.type:
            checks.append(Check(FAIL, f"back-end {key}", reason, 'or set backend.type = "cpu"'))
        elif key in needed:
            checks.append(Check(WARN, f"back-end {key}", f"fallback unavailable: {reason}"))
        else:
            checks.append(Check(OK, f"back-end {key}", "not installed (not used by this configuration)"))
    return checks


def check_models(config: ApplianceConfig) -> List[Check]:
    store = ModelStore(config.models.dir)
    needed = {spec.name for spec in pipeline_models(config)}
    checks: List[Check] = []
    missing: List[str] = []
    for status in store.check_all(MODELS):
        if status.ok:
            checks.append(Check(OK, f"model {status.spec.name}", "present, sha256 verified"))
        elif status.spec.name in needed:
            missing.append(status.spec.name)
            checks.append(
                Check(
                    FAIL,
                    f"model {status.spec.name}",
                    status.detail,
                    f"face-appliance models fetch {status.spec.name} --dest {store.root}",
                )
            )
        else:
            checks.append(
                Check(
                    OK, f"model {status.spec.name}", f"{status.state.value} (not used by this configuration)"
                )
            )
    return checks


def check_prepared(config: ApplianceConfig) -> List[Check]:
    """Prepared (dynamic-batch) models give the original's outputs, batched vs one by one."""
    store = ModelStore(config.models.dir)
    checks: List[Check] = []
    for spec in MODELS:
        if not spec.prepare or not store.check(spec).ok:
            continue
        try:
            path = store.path(spec)
            worst, _ = compare_batched(path.read_bytes(), load_model_bytes(spec, path), batch=4)
        except (EngineError, ImportError) as err:
            checks.append(Check(FAIL, f"prepared {spec.name}", str(err)))
            continue
        status = OK if worst < PREPARED_TOLERANCE else FAIL
        checks.append(
            Check(
                status,
                f"prepared {spec.name}",
                f"dynamic batch, max |diff| {worst:.2e} vs original",
                "report this: the graph edit changed the outputs",
            )
        )
    return checks


def check_smoke(config: ApplianceConfig) -> List[Check]:
    """Load each pipeline model on the configured back-end and run a batch of 2."""
    checks: List[Check] = []
    key = config.backend.type
    try:
        backend_class(key)
    except BackendUnavailableError as err:
        if config.backend.fallback != "cpu":
            return [
                Check(FAIL, "inference", str(err), 'install the back-end or set backend.fallback = "cpu"')
            ]
        checks.append(
            Check(WARN, "inference", f"{key} unavailable, the daemon would run degraded on the CPU")
        )
        key = "cpu"
    options = backend_options(config)
    for spec in pipeline_models(config):
        started = time.perf_counter()
        try:
            with open_model(key, spec, config.models.dir, options) as backend:
                load_ms = (time.perf_counter() - started) * 1000
                backend.warmup(iterations=1, batch=2)
                started = time.perf_counter()
                backend.warmup(iterations=1, batch=2)
                run_ms = (time.perf_counter() - started) * 1000
        except EngineError as err:
            checks.append(Check(FAIL, f"inference {spec.name}", str(err)))
            continue
        checks.append(
            Check(
                OK,
                f"inference {spec.name}",
                f"{key}: loaded in {load_ms:.0f} ms, batch of 2 in {run_ms:.1f} ms",
            )
        )
    return checks


def check_tensorrt_parity(config: ApplianceConfig, images: Sequence[Path] = ()) -> List[Check]:
    """TensorRT against the CPU back-end on ``images`` (synthetic crops without): the same faces
    (IoU >= 0.8) and the same embeddings (cosine >= 0.99). Skipped, with the reason, without TensorRT."""
    from engines.tensorrt.platform import tensorrt_unavailable

    from .trt_parity import MIN_COSINE, MIN_IOU, compare
    from .vision.image import ImageError, read_image

    reason = tensorrt_unavailable()
    if reason is not None:
        return [Check(OK, "tensorrt parity", f"skipped: TensorRT unavailable: {reason}")]
    loaded = []
    for path in images:
        try:
            loaded.append((Path(path).name, read_image(path)))
        except ImageError as err:
            return [Check(FAIL, "tensorrt parity", str(err), "pass readable photos with faces")]
    backend = config.backend
    on_cpu = config.model_copy(update={"backend": backend.model_copy(update={"type": "cpu"})})
    on_trt = config.model_copy(
        update={"backend": backend.model_copy(update={"type": "tensorrt", "fallback": "none"})}
    )
    try:
        with load_analyzer(on_cpu) as cpu, load_analyzer(on_trt) as accelerated:
            result = compare(cpu, accelerated, loaded)
    except EngineError as err:
        return [Check(FAIL, "tensorrt parity", f"cannot load the pipeline: {err}")]
    hint = "" if loaded else "pass --parity-images DIR (photos with faces) to compare detections too"
    if result.ok:
        return [Check(OK, "tensorrt parity", result.describe(), hint)]
    return [
        Check(
            FAIL,
            "tensorrt parity",
            f"{result.describe()}; " + "; ".join(result.problems[:5]),
            f"TensorRT and the CPU disagree beyond IoU {MIN_IOU} / cosine {MIN_COSINE}: rebuild the engines "
            "at a higher precision (face-appliance engines build --precision fp16 --force)",
        )
    ]


def check_storage(config: ApplianceConfig) -> List[Check]:
    checks: List[Check] = []
    directory: Path = config.storage.dir
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        checks.append(
            Check(
                FAIL,
                "storage",
                f"{directory} is not writable (checked {probe})",
                "create it for the service user, e.g. systemd StateDirectory=face-appliance",
            )
        )
    else:
        free_mb = shutil.disk_usage(probe).free / 2**20
        status = OK if free_mb >= 200 else WARN
        checks.append(
            Check(
                status,
                "storage",
                f"{directory} writable, {free_mb:.0f} MiB free",
                "keep at least 200 MiB free for staged models and the outbox",
            )
        )
    for key, path in (
        ("mqtt.tls.ca_file", config.mqtt.tls.ca_file),
        ("mqtt.tls.cert_file", config.mqtt.tls.cert_file),
        ("mqtt.tls.key_file", config.mqtt.tls.key_file),
    ):
        if path is not None and not path.is_file():
            checks.append(Check(FAIL, key, f"{path} does not exist"))
    checks.extend(Check(WARN, "secrets", warning) for warning in secret_file_warnings(config))
    return checks


def check_updates(config: ApplianceConfig) -> List[Check]:
    """Model updates over CAN: the trusted keys, the SecurityAccess secret and the CAN interface."""
    updates = config.updates
    if not updates.enabled:
        return [Check(OK, "updates", "disabled (updates.enabled = false)")]
    from .updates.can_link import CanLinkError, open_bus
    from .updates.errors import UpdateError
    from .updates.keys import load_trusted_keys
    from .updates.uds_protocol import read_security_secret

    checks: List[Check] = []
    try:
        trusted = load_trusted_keys(updates.trusted_keys_dir)
    except UpdateError as err:
        checks.append(Check(FAIL, "updates keys", str(err), "copy the release key's .pub file there"))
    else:
        status = OK if trusted else WARN
        detail = f"{len(trusted)} trusted key(s) in {updates.trusted_keys_dir}"
        checks.append(Check(status, "updates keys", detail, "without one every package is refused"))
    try:
        read_security_secret(updates.security_secret_file)  # type: ignore[arg-type]
    except (UpdateError, OSError, ValueError) as err:
        checks.append(Check(FAIL, "updates secret", str(err), "one line of at least 16 characters"))
    else:
        checks.append(Check(OK, "updates secret", "readable"))
    try:
        bus = open_bus(updates.can, server=True)
    except CanLinkError as err:
        checks.append(Check(FAIL, "updates CAN", str(err)))
    else:
        bus.shutdown()
        checks.append(Check(OK, "updates CAN", f"{updates.can.interface} {updates.can.channel} opens"))
    return checks


def check_access(config: ApplianceConfig) -> List[Check]:
    """The access policy as this door will apply it: its groups defined and open some time, nobody
    left out by accident (read from the gallery; nothing is created when there is none yet)."""
    from .access.errors import PolicyError
    from .gallery.errors import GalleryError
    from .gallery.gallery import STORE_FILE
    from .gallery.store import TemplateStore

    access = config.access
    path = config.storage.dir / STORE_FILE
    if not path.is_file():
        return [Check(OK, "access policy", f"no gallery at {path} yet")]
    try:
        with TemplateStore.open(path, config.gallery_key_file) as store:
            tables = store.policy_tables()
            identities = store.identities()
    except (GalleryError, PolicyError, OSError) as err:
        return [
            Check(FAIL, "access policy", f"cannot read the gallery: {err}", "face-appliance gallery check")
        ]
    checks: List[Check] = []
    suspended = sum(identity.policy.suspended for identity in identities)
    if not access.groups:
        checks.append(
            Check(
                OK,
                "access policy",
                f"groups not checked at this door; {len(identities)} identities, {suspended} suspended",
            )
        )
    for name in access.groups:
        group = tables.groups.get(name)
        if group is None:
            checks.append(
                Check(
                    FAIL,
                    f"access group {name}",
                    "admitted by this door (access.groups) but not defined: it admits nobody",
                    f"face-appliance access group set {name} --schedule 'mon-fri 08:00-18:00'",
                )
            )
        elif not group.schedule.windows:
            checks.append(Check(WARN, f"access group {name}", "has no schedule window: it admits nobody"))
        else:
            members = sum(name in identity.policy.groups for identity in identities)
            checks.append(
                Check(OK, f"access group {name}", f"{'; '.join(group.schedule.texts())}; {members} member(s)")
            )
        for calendar in group.holidays if group is not None else ():
            if calendar not in tables.calendars:
                checks.append(
                    Check(
                        WARN,
                        f"access group {name}",
                        f"names holiday calendar {calendar!r}, which is not defined",
                    )
                )
    if access.groups:
        admitted = [
            i for i in identities if set(i.policy.groups) & set(access.groups) and not i.policy.suspended
        ]
        if identities and not admitted:
            checks.append(
                Check(
                    WARN,
                    "access policy",
                    f"this door admits {', '.join(access.groups)}, and none of the "
                    f"{len(identities)} identities is in one of them (not suspended): it admits nobody",
                    "face-appliance gallery set ID --add-group GROUP",
                )
            )
        unknown = sorted({g for i in identities for g in i.policy.groups} - set(tables.groups))
        if unknown:
            checks.append(
                Check(WARN, "access policy", f"identities name undefined groups: {', '.join(unknown[:10])}")
            )
    checks.extend(_named_groups(config, tables, identities))
    checks.extend(_second_factors(config, identities))
    checks.extend(_without_face(config, identities))
    checks.extend(_face_optional(config, identities))
    checks.extend(_shared_cards(identities))
    checks.extend(check_presence(config))
    return checks


def _second_factors(config: ApplianceConfig, identities: List[Any]) -> List[Check]:
    """Under ``access.second_factor``: the people it applies to hold what it asks for — one without a
    card (or a PIN) can never pass, as their face alone is held."""
    from .access.second_factor import ACCEPTS

    factor = config.access.second_factor
    if factor.require == "off":
        return []
    key = "access.second_factor"
    applies = [
        i
        for i in identities
        if i.templates
        and not i.policy.suspended
        and (not factor.groups or set(factor.groups) & set(i.policy.groups))
    ]
    kinds = ACCEPTS[factor.require]
    lacking = [
        i
        for i in applies
        if not (("card" in kinds and i.policy.cards) or ("pin" in kinds and i.policy.pin is not None))
    ]
    duress = sum(i.policy.duress_pin is not None for i in applies)
    what = " or ".join(kinds)
    if lacking:
        return [
            Check(
                WARN,
                key,
                f"{len(lacking)} of the {len(applies)} people it applies to hold no {what} and cannot pass: "
                f"{_some(lacking)}",
                "face-appliance gallery set ID --card w26:FACILITY:CARD (or --pin)",
            )
        ]
    detail = f"{what} after the face, for {len(applies)} people; {duress} hold a duress PIN"
    if "pin" not in kinds and duress:
        detail += " (unused: this door asks for no PIN)"
    return [Check(OK, key, detail)]


def _without_face(config: ApplianceConfig, identities: List[Any]) -> List[Check]:
    """People without a face (no templates) pass only by ``access.without_face``, with what it asks for:
    one without it can never pass here."""
    faceless = [i for i in identities if not i.templates and not i.policy.suspended]
    require = config.access.without_face.require
    key = "access.without_face"
    if not faceless:
        return (
            []
            if require == "off"
            else [Check(OK, key, f"{require.replace('_', ' ')}; nobody is without a face")]
        )
    if require == "off":
        return [
            Check(
                WARN,
                key,
                f"{len(faceless)} people have no face enrolled and cannot pass here: {_some(faceless)}",
                "set access.without_face.require = 'card_and_pin', or enrol their faces",
            )
        ]
    lacking, what = _lacking(faceless, require)
    if lacking:
        return [
            Check(
                WARN,
                key,
                f"{len(lacking)} of the {len(faceless)} people without a face lack {what} and cannot "
                f"pass: {_some(lacking)}",
                "face-appliance gallery set ID --card w26:FACILITY:CARD --pin",
            )
        ]
    return [Check(OK, key, f"{what} for {len(faceless)} people without a face")]


def _lacking(identities: List[Any], require: str) -> Tuple[List[Any], str]:
    """Those of ``identities`` who lack what ``access.without_face.require`` asks for, and what it is."""
    needs_pin = require == "card_and_pin"
    lacking = [i for i in identities if not i.policy.cards or (needs_pin and i.policy.pin is None)]
    return lacking, "a card and a PIN" if needs_pin else "a card"


def _face_optional(config: ApplianceConfig, identities: List[Any]) -> List[Check]:
    """People with a face whom ``access.without_face.face_optional_groups`` lets pass by card too: how
    many (their card and a watched PIN replace their face), and those who hold too little to."""
    rule = config.access.without_face
    groups = set(rule.face_optional_groups)
    if not groups:
        return []
    key = "access.without_face.face_optional_groups"
    members = [i for i in identities if i.templates and groups & set(i.policy.groups)]
    if not members:
        return [Check(WARN, key, f"nobody with a face is in {', '.join(sorted(groups))}", "")]
    lacking, what = _lacking(members, rule.require)
    if lacking:
        return [
            Check(
                WARN,
                key,
                f"{len(lacking)} of the {len(members)} people of {', '.join(sorted(groups))} lack {what}: "
                f"only their face lets them in: {_some(lacking)}",
                "face-appliance gallery set ID --card w26:FACILITY:CARD --pin",
            )
        ]
    return [
        Check(
            OK,
            key,
            f"people with a face in these groups ({len(members)}) may also pass by {what}: their card "
            "and PIN replace their face",
        )
    ]


def _shared_cards(identities: List[Any]) -> List[Check]:
    """Cards several identities hold, which open nothing (a card names one person): a fleet record
    takes a card a local identity held, or records of older firmware that clash."""
    holders: Dict[str, List[str]] = {}
    for identity in identities:
        for card in identity.policy.cards:
            holders.setdefault(card, []).append(identity.id)
    shared = sorted((card, ids) for card, ids in holders.items() if len(ids) > 1)
    if not shared:
        return []
    listed = "; ".join(f"{card} ({', '.join(ids)})" for card, ids in shared[:10])
    return [
        Check(
            WARN,
            "cards",
            f"{len(shared)} card(s) held by several identities open nothing: {listed}"
            + (" …" if len(shared) > 10 else ""),
            "leave each card to one person: gallery set ID --remove-card CARD (an identity enrolled here), "
            "fleet set ID --remove-card CARD (the fleet's)",
        )
    ]


def _some(identities: List[Any], most: int = 10) -> str:
    """The first ``most`` identity ids, and `…` for more."""
    return ", ".join(i.id for i in identities[:most]) + (" …" if len(identities) > most else "")


def _named_groups(config: ApplianceConfig, tables: Any, identities: List[Any]) -> List[Check]:
    """The groups anti-passback exempts, the door's first person comes from, and the two-person rule
    holds and takes companions from: defined, and (those someone must come from) with members — a
    first-person group with nobody in it keeps the door locked through every window, a companion
    group with nobody in it holds every grant it applies to."""
    checks: List[Check] = []
    named = [
        ("access.anti_passback.exempt_groups", g, False) for g in config.access.anti_passback.exempt_groups
    ]
    for door in config.configured_doors:
        key = _door_key(door.id, "unlock.first_person_groups")
        named += [(key, g, True) for g in door.unlock.first_person_groups]
    named += [("access.two_person.groups", g, False) for g in config.access.two_person.groups]
    named += [("access.two_person.companions", g, True) for g in config.access.two_person.companions]
    for key, group, needs_members in named:
        if group not in tables.groups:
            checks.append(Check(WARN, key, f"names group {group!r}, which is not defined"))
        elif needs_members and not any(
            group in identity.policy.groups and not identity.policy.suspended for identity in identities
        ):
            checks.append(
                Check(
                    WARN,
                    key,
                    f"nobody (not suspended) is in {group!r}: nobody of it can come",
                    f"face-appliance gallery set ID --add-group {group}",
                )
            )
    holidays = [(door.id, calendar) for door in config.configured_doors for calendar in door.unlock.holidays]
    for door_id, calendar in holidays:
        if calendar not in tables.calendars:
            checks.append(
                Check(
                    WARN,
                    _door_key(door_id, "unlock.holidays"),
                    f"names holiday calendar {calendar!r}, which is not defined: it closes no window",
                    f"face-appliance access calendar set {calendar} YYYY-MM-DD …",
                )
            )
    return checks


def _door_key(door_id: str, key: str) -> str:
    """A door's key as the configuration spells it: ``door.KEY``, or the door's id with several."""
    return f"door.{key}" if door_id == DEFAULT_DOOR_ID else f"doors[{door_id}].{key}"


def check_presence(config: ApplianceConfig) -> List[Check]:
    """Anti-passback's store of last passages opens (when anti-passback is on)."""
    from .access.presence import PRESENCE_FILE, PresenceError, PresenceStore

    mode = config.access.anti_passback.mode
    if mode == "off":
        return []
    path = config.storage.dir / PRESENCE_FILE
    ways = ", ".join(f"{camera} {way}" for camera, way in config.camera_directions.items())
    if not path.is_file():
        return [Check(OK, "anti-passback", f"{mode}; {ways}; no passage kept yet")]
    try:
        with PresenceStore.open(path) as store:
            kept = store.entries()
    except PresenceError as err:
        return [Check(FAIL, "anti-passback", str(err))]
    inside = sum(entry.direction == "in" for entry in kept)
    return [Check(OK, "anti-passback", f"{mode}; {ways}; {len(kept)} passages kept, {inside} in")]


def check_door(config: ApplianceConfig) -> List[Check]:
    """The door's GPIO lines, the OSDP port and the card reader's, when enabled."""
    checks: List[Check] = []
    doors = config.configured_doors
    for door in doors:
        from .door.doctor import doctor_checks as door_checks

        # Which of several: "door entry lines".
        named = "door" if door.id == DEFAULT_DOOR_ID else f"door {door.id}"
        checks.extend(
            Check(status, subject.replace("door", named, 1), detail, hint)
            for status, subject, detail, hint in door_checks(door)
        )
    if not doors:
        checks.append(Check(OK, "door I/O", "disabled (door.enabled = false)"))
    if config.osdp.enabled:
        from .osdp.doctor import doctor_checks as osdp_checks

        checks.extend(Check(*found) for found in osdp_checks(config.osdp))
    else:
        checks.append(Check(OK, "OSDP", "disabled (osdp.enabled = false)"))
    for reader in config.configured_readers:
        from .osdp.doctor import card_reader_checks

        checks.extend(Check(*found) for found in card_reader_checks(reader))
    return checks


def _previous_fleet_key(path: Optional[Path], key: bytes) -> List[Check]:
    """``fleet.previous_fleet_key_file``: readable when set, and not the current key (a rotated key
    installed in the wrong credential)."""
    from .fleet.errors import FleetError
    from .fleet.records import fleet_key_id, read_previous_fleet_key

    if path is None:
        return []
    try:
        previous = read_previous_fleet_key(path)
    except FleetError as err:
        return [
            Check(
                FAIL,
                "previous fleet key",
                str(err),
                "give it the key before the site's rotation, or empty it",
            )
        ]
    if previous is None:
        return [Check(OK, "previous fleet key", f"{path} is empty: none")]
    if previous == key:
        return [
            Check(
                WARN,
                "previous fleet key",
                f"{path} holds the current fleet key: records and events of the key before the rotation "
                "are not opened",
                "the rotated key goes into fleet_key, the one it replaced into fleet_key_previous",
            )
        ]
    return [
        Check(OK, "previous fleet key", f"{path}: key id {fleet_key_id(previous)}, opened beside the current")
    ]


def check_fleet(config: ApplianceConfig) -> List[Check]:
    """``[fleet]``: the site's fleet key (which also signs the access events when set without the
    fleet) and the trusted authority keys (the records themselves are checked by the daemon, each
    with its reason in ``…/state``)."""
    fleet = config.fleet
    from .fleet.errors import FleetError
    from .fleet.records import fleet_key_id, read_fleet_key
    from .updates.keys import load_trusted_keys

    checks: List[Check] = []
    if fleet.fleet_key_file is not None:
        try:
            key = read_fleet_key(fleet.fleet_key_file)
            checks.append(
                Check(
                    OK,
                    "fleet key",
                    f"{fleet.fleet_key_file} readable, 32 bytes, key id {fleet_key_id(key)} (compare with "
                    "`fleet status`); it signs the access events",
                )
            )
            checks.extend(_previous_fleet_key(fleet.previous_fleet_key_file, key))
        except (FleetError, OSError) as err:
            fix = "copy the site's fleet key (face-appliance fleet init) there"
            checks.append(Check(FAIL, "fleet key", str(err), fix))
    if not fleet.enabled:
        return [*checks, Check(OK, "fleet", "disabled (fleet.enabled = false)")]
    assert fleet.trusted_keys_dir is not None
    try:
        trusted = load_trusted_keys(fleet.trusted_keys_dir)
    except Exception as err:
        checks.append(Check(FAIL, "fleet authorities", str(err)))
    else:
        status = OK if trusted else FAIL
        detail = f"{len(trusted)} trusted authority key(s) in {fleet.trusted_keys_dir}"
        checks.append(Check(status, "fleet authorities", detail, "copy the authority's .pub key there"))
    return checks


def run_checks(
    config: ApplianceConfig, smoke: bool = True, parity_images: Sequence[Path] = ()
) -> List[Check]:
    """Every check, in the order an installer would fix things (``parity_images``: for the TensorRT
    parity check, part of the smoke checks)."""
    groups: List[Callable[[ApplianceConfig], List[Check]]] = [
        lambda _: check_platform(),
        check_packages,
        check_backends,
        check_models,
        check_storage,
        check_updates,
        check_access,
        check_door,
        check_fleet,
    ]
    if smoke:
        groups.extend([check_prepared, check_smoke, lambda cfg: check_tensorrt_parity(cfg, parity_images)])
    checks: List[Check] = []
    for group in groups:
        checks.extend(group(config))
    return checks
