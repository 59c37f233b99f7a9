"""The appliance's configuration: one TOML file validated into typed, strict models.

Every section refuses unknown keys and wrong types (no silent coercion of ``"1883"`` to 1883);
ranges and cross-field rules are checked; all problems are reported at once with their key path,
the value found and what is allowed (see :mod:`appliance.config_errors`).

Paths may be relative: they are resolved against the folder of the configuration file. A path
may start with ``${CREDENTIALS_DIRECTORY}`` to name a systemd credential (``LoadCredential=``).
Secrets (``SecretStr``) are never printed; ``mqtt.password_file`` is read when the file is loaded.

``config/appliance.toml`` is generated from these models (:func:`render_default_toml`), so it
documents every key with its default; ``config/appliance.schema.json`` is the exported JSON schema.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, get_args, get_origin

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated, Literal

from .access.settings import AccessConfig
from .config_types import ID_PATTERN, ConfigPath, StrictModel
from .door.settings import DoorConfig, DoorEntryConfig
from .fleet.door_settings import FleetConfig
from .osdp.card_reader_settings import (
    MAX_READERS_PER_LINE,
    CredentialReaderConfig,
    CredentialReaderEntryConfig,
)
from .osdp.settings import OsdpConfig

DEFAULT_CONFIG_PATH = Path("/etc/face-appliance/appliance.toml")
#: What an identifier (``device.id``, a camera's ``id``) may hold: it goes into MQTT topics, events and
#: log fields, so no '/', '+', '#', spaces or control characters.
NAME_PATTERN = ID_PATTERN
#: The id of the single ``[camera]`` when it does not name itself.
DEFAULT_CAMERA_ID = "cam0"
#: Lowest ``match.threshold`` (and ``set_threshold``): a cosine similarity of L2-normalised
#: embeddings below it accepts a large share of strangers (at 0.14, 10 % of impostor pairs in the
#: README's evaluation), and a tiny value grants the nearest match to anyone.
MATCH_THRESHOLD_MIN = 0.2
#: Highest ``match.threshold``: two photos of one person never reach 1, so a threshold near it
#: accepts nobody.
MATCH_THRESHOLD_MAX = 0.95


def _host_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-.") or "face-appliance"
    return name if re.match(NAME_PATTERN, name) else "face-appliance"


class DeviceConfig(StrictModel):
    """[device] — Who this appliance is."""

    id: str = Field(
        default_factory=_host_name,
        pattern=NAME_PATTERN,
        description="Device identifier: the last level of the MQTT topic root {prefix}/{id}. "
        "Letters, digits, '_', '.', '-'. Default: the host name.",
        json_schema_extra={"example": "door-1"},
    )
    name: str = Field("", max_length=128, description="Human-readable name, e.g. for Home Assistant.")


class CameraConfig(StrictModel):
    """[camera] — Where frames come from (several cameras: one [[cameras]] table each, with these keys)."""

    id: str = Field(
        DEFAULT_CAMERA_ID,
        pattern=NAME_PATTERN,
        description="Camera identifier carried in events (camera_id), logs and the state topic. "
        "Letters, digits, '_', '.', '-'.",
    )
    source: str = Field(
        "/dev/video0",
        min_length=1,
        description="A video file, a folder of images (relative paths: from this file's folder), a V4L2 "
        "device (/dev/videoN or an index), an rtsp:// URL, or a GStreamer pipeline ending in appsink "
        "(Jetson CSI camera: see README).",
    )
    type: Literal["auto", "file", "folder", "v4l2", "rtsp", "gstreamer"] = Field(
        "auto", description="How to read `source`; auto guesses from its form."
    )
    at_end: Literal["stop", "loop"] = Field(
        "stop",
        description="When a video file or image folder ends: stop the daemon cleanly, or loop. With "
        "several cameras, 'stop' ends this camera; the daemon stops once every camera has ended.",
    )
    direction: Literal["none", "in", "out"] = Field(
        "none",
        description="Which way the people this camera sees pass: in (entering the area behind the door), "
        "out (leaving it), or none. Anti-passback ([access.anti_passback]) and `access presence` follow "
        "each identity's last granted direction.",
    )
    width: Optional[int] = Field(
        None,
        ge=16,
        le=8192,
        description="Requested frame width (live sources).",
        json_schema_extra={"example": 1280},
    )
    height: Optional[int] = Field(
        None,
        ge=16,
        le=8192,
        description="Requested frame height (live sources).",
        json_schema_extra={"example": 720},
    )
    fps: Optional[float] = Field(
        None,
        gt=0,
        le=240,
        description="Requested frame rate (live sources); files play as fast as processed.",
        json_schema_extra={"example": 30.0},
    )
    reconnect_min_s: float = Field(
        1.0, ge=0.1, le=60, description="First reconnect delay after a live source fails."
    )
    reconnect_max_s: float = Field(
        30.0, ge=1, le=3600, description="Longest reconnect delay (exponential back-off)."
    )

    @field_validator("source")
    @classmethod
    def _relative_paths(cls, value: str, info: ValidationInfo) -> str:
        # A relative video file or image folder is taken from the configuration file's folder, like
        # every other path; URLs, pipelines, devices and indexes are left alone.
        base = (info.context or {}).get("base_dir")
        looks_like_path = not ("://" in value or "!" in value or value.isdigit() or value.startswith("/"))
        if base is not None and looks_like_path:
            return os.path.normpath(os.path.join(os.fspath(base), value))
        return value

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("camera.width and camera.height must be given together")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"camera.reconnect_min_s ({self.reconnect_min_s}) is above camera.reconnect_max_s "
                f"({self.reconnect_max_s})"
            )
        return self


class MqttTlsConfig(StrictModel):
    """[mqtt.tls] — TLS to the broker."""

    enabled: bool = Field(False, description="Connect with TLS (usually port 8883).")
    ca_file: Optional[ConfigPath] = Field(
        None,
        description="CA certificate(s) to check the broker with; default: the system store.",
        json_schema_extra={"example": "/etc/face-appliance/ca.crt"},
    )
    cert_file: Optional[ConfigPath] = Field(
        None,
        description="Client certificate, for brokers that require one.",
        json_schema_extra={"example": "/etc/face-appliance/client.crt"},
    )
    key_file: Optional[ConfigPath] = Field(
        None,
        description="Client private key (may be a systemd credential).",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/mqtt_client_key"},
    )
    insecure: bool = Field(False, description="Skip the broker host-name check (testing only).")

    @model_validator(mode="after")
    def _check(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.tls.cert_file and mqtt.tls.key_file must be given together")
        if not self.enabled and (self.ca_file or self.cert_file or self.insecure):
            raise ValueError("mqtt.tls settings are given but mqtt.tls.enabled is false")
        return self


class HomeAssistantConfig(StrictModel):
    """[mqtt.homeassistant] — Opt-in Home Assistant MQTT discovery."""

    discovery: bool = Field(False, description="Publish Home Assistant discovery messages.")
    prefix: str = Field(
        "homeassistant", pattern=r"^[^#+/]+$", description="Home Assistant's discovery prefix."
    )


class MqttConfig(StrictModel):
    """[mqtt] — The broker that events go to and commands come from."""

    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    prefix: str = Field(
        "face-appliance",
        pattern=r"^[^#+/]+(/[^#+/]+)*$",
        description="Topic prefix; topics are {prefix}/{device.id}/… (no wildcards, no leading or trailing '/').",
    )
    client_id: Optional[str] = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id; default face-appliance-{device.id}.",
        json_schema_extra={"example": "face-appliance-door-1"},
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keep-alive interval in seconds.")
    username: Optional[str] = Field(
        None,
        min_length=1,
        description="User name for password authentication.",
        json_schema_extra={"example": "door-1"},
    )
    password: Optional[SecretStr] = Field(
        None,
        description="Password (prefer password_file: a secret in this file is readable by whoever reads it).",
        json_schema_extra={"example": "change-me"},
    )
    password_file: Optional[ConfigPath] = Field(
        None,
        description="File holding the password (first line), e.g. a systemd credential.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/mqtt_password"},
    )
    reconnect_min_s: float = Field(1.0, ge=0.1, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, ge=1, le=3600, description="Longest reconnect delay.")
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    _password_from_file: Optional[SecretStr] = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("mqtt.password and mqtt.password_file are both set; keep one")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password is set but mqtt.username is not")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"mqtt.reconnect_min_s ({self.reconnect_min_s}) is above mqtt.reconnect_max_s ({self.reconnect_max_s})"
            )
        return self

    def secret_password(self) -> Optional[SecretStr]:
        """The password from ``password`` or from ``password_file`` (read at load time)."""
        return self.password if self.password is not None else self._password_from_file


class StorageConfig(StrictModel):
    """[storage] — The appliance's state: gallery, outbox, staged models, engines."""

    dir: ConfigPath = Field(
        Path("/var/lib/face-appliance"), description="State directory (created if absent)."
    )


class ModelsConfig(StrictModel):
    """[models] — Where the ONNX models are."""

    dir: ConfigPath = Field(
        Path("/var/lib/face-appliance/models"),
        description="Models directory, laid out like the mirror (see `face-appliance models fetch`).",
    )


class TensorRTConfig(StrictModel):
    """[backend.tensorrt] — TensorRT engines on a Jetson."""

    precision: Literal["auto", "int8", "fp16", "fp32"] = Field(
        "auto", description="auto: INT8 where the GPU has fast INT8 (Xavier, Orin), else FP16 (Nano)."
    )
    device: int = Field(0, ge=0, le=15, description="CUDA device index.")
    engine_dir: Optional[ConfigPath] = Field(
        None,
        description="Engine cache; default {storage.dir}/engines.",
        json_schema_extra={"example": "/var/lib/face-appliance/engines"},
    )
    workspace_mb: int = Field(256, ge=16, le=16384, description="Builder workspace limit in MiB.")
    max_batch: int = Field(16, ge=1, le=64, description="Largest batch of faces an engine accepts.")
    dla_core: Optional[int] = Field(
        None,
        ge=0,
        le=1,
        description="Run on this DLA core (Xavier/Orin), GPU fallback for unsupported layers.",
        json_schema_extra={"example": 0},
    )
    calibration_dir: Optional[ConfigPath] = Field(
        None,
        description="INT8 calibration sets (<model>.npy from `face-appliance calibrate`); a model with a "
        "set gets an INT8 engine where the GPU has fast INT8. Default {storage.dir}/calibration.",
        json_schema_extra={"example": "/var/lib/face-appliance/calibration"},
    )

    @model_validator(mode="after")
    def _check(self) -> TensorRTConfig:
        if self.dla_core is not None and self.precision == "fp32":
            raise ValueError("backend.tensorrt.dla_core needs precision fp16, int8 or auto: DLA has no FP32")
        return self


class BackendConfig(StrictModel):
    """[backend] — Which inference runtime runs the models."""

    type: Literal["cpu", "tensorrt"] = Field(
        "cpu", description="cpu: ONNX Runtime; tensorrt: TensorRT engines."
    )
    fallback: Literal["cpu", "none"] = Field(
        "cpu",
        description="If TensorRT cannot start: continue on the CPU (logged and published as degraded), or fail.",
    )
    threads: int = Field(
        0, ge=0, le=64, description="CPU back-end: threads in the pool all models share (0 = one per core)."
    )
    int8: bool = Field(
        False,
        description="CPU back-end: load each model's INT8 (QDQ) version when `face-appliance calibrate` "
        "installed one that passed its gate (see [calibration]); FP32 otherwise, with a warning.",
    )
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)


class MtcnnConfig(StrictModel):
    """[detector.mtcnn] — MTCNN cascade settings."""

    scale_factor: float = Field(0.709, gt=0.1, lt=0.95, description="Image pyramid scale step.")
    thresholds: List[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.6, 0.7, 0.7], min_length=3, max_length=3, description="Face score thresholds of P-, R- and O-Net."
    )


class YunetConfig(StrictModel):
    """[detector.yunet] — YuNet settings."""

    score_threshold: float = Field(0.6, gt=0, lt=1, description="Face score threshold.")
    nms_threshold: float = Field(0.3, gt=0, lt=1, description="Overlap above which boxes are merged.")
    input_side: int = Field(
        640, ge=64, le=4096, description="Network input: the longer side of a frame is scaled down to this."
    )


class DetectorConfig(StrictModel):
    """[detector] — Face detection."""

    type: Literal["mtcnn", "yunet"] = Field("mtcnn", description="mtcnn (accurate) or yunet (faster).")
    min_face_px: int = Field(40, ge=12, le=2048, description="Smallest face side, in pixels, to look for.")
    max_side: int = Field(
        1920,
        ge=160,
        le=8192,
        description="Larger images are scaled down to this longer side before detection (boxes and "
        "landmarks are mapped back; alignment uses the full image).",
    )
    mtcnn: MtcnnConfig = Field(default_factory=MtcnnConfig)
    yunet: YunetConfig = Field(default_factory=YunetConfig)


class EmbedderConfig(StrictModel):
    """[embedder] — Face embeddings."""

    model: Literal["mobilefacenet"] = Field("mobilefacenet", description="Embedding model.")
    batch_size: int = Field(8, ge=1, le=64, description="Faces embedded per inference.")


class LivenessConfig(StrictModel):
    """[liveness] — presentation-attack detection (MiniFASNet ×2)."""

    enabled: bool = Field(False, description="Check liveness before granting access.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Fused live score needed to pass.")
    alarm_after: int = Field(
        0,
        ge=0,
        le=100,
        description="Raise a spoof_alarm door event when this many passages at one camera are denied for "
        "liveness within alarm_window_s (someone trying photos or screens one after another); 0: off.",
    )
    alarm_window_s: float = Field(60.0, gt=0, le=3600, description="The window of liveness.alarm_after.")
    lockout_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="After a spoof alarm, grants at that camera are denied (reason 'lockout') until this long "
        "after its last liveness failure; 0: the alarm only.",
    )

    @model_validator(mode="after")
    def _alarm(self) -> LivenessConfig:
        if self.alarm_after and not self.enabled:
            raise ValueError("liveness.alarm_after counts liveness failures, but liveness.enabled is false")
        if self.lockout_s and not self.alarm_after:
            raise ValueError("liveness.lockout_s follows a spoof alarm; set liveness.alarm_after too")
        return self


class MatchConfig(StrictModel):
    """[match] — Gallery matching."""

    threshold: float = Field(
        0.50,
        ge=MATCH_THRESHOLD_MIN,
        le=MATCH_THRESHOLD_MAX,
        description=f"Cosine similarity needed to accept an identity (derive it from `evaluate`); "
        f"{MATCH_THRESHOLD_MIN} to {MATCH_THRESHOLD_MAX}: lower accepts strangers, near 1 accepts nobody.",
    )


class GalleryConfig(StrictModel):
    """[gallery] — Enrolled identities: the encrypted template store and its search index."""

    key_file: Optional[ConfigPath] = Field(
        None,
        description="AES-256 key that encrypts embeddings and crops at rest (32 bytes, mode 0600); "
        "default {storage.dir}/gallery.key, created with the gallery. May be a systemd credential.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/gallery_key"},
    )
    approximate_above: int = Field(
        200_000,
        ge=1000,
        le=100_000_000,
        description="Above this many templates, search uses an approximate (HNSW) index.",
    )
    prefilter_above: int = Field(
        10_000,
        ge=1000,
        le=100_000_000,
        description="From this many templates the exact search first ranks 32-byte codes of them (Faiss fast scan) "
        "and scores the best 256 exactly: 0.6 ms instead of 3.5 ms at 100 000 on a 2-core VM, 0.2 instead of 0.4 ms "
        "at 10 000, the same top-1 (checked on 400 probes whenever it is built). At approximate_above or more: always "
        "a full scan.",
    )
    hnsw_ef_search: int = Field(
        192,
        ge=8,
        le=4096,
        description="HNSW search breadth: higher is more exact and slower (192: recall@1 ≥ 0.99 at 1 000 000 "
        "templates, p99 about 1 ms).",
    )
    persist_index: bool = Field(
        True,
        description="Save the search index next to the store (quick start for large galleries). false: "
        "embeddings exist on disk only encrypted; the index is rebuilt from the store at every start.",
    )
    index_precision: Literal["float32", "float16"] = Field(
        "float16",
        description="Exact index storage: float16 (256 B per 128-d template) reads half the bytes of float32 and "
        "searches about twice as fast; every score within 0.0005 of float32's. float32: exact scores.",
    )
    index_delta_ratio: float = Field(
        0.1,
        ge=0,
        le=10,
        description="An enrolment appends a small record to gallery.index.delta; the index file is rewritten "
        "when the delta outgrows this fraction of it (and 1 MiB), and at every removal. 0: rewrite it at "
        "every change.",
    )
    duplicate_threshold: float = Field(
        0.6, gt=0, le=1, description="Enrolment warns when a new face is this similar to another identity."
    )
    min_face_px: int = Field(
        64, ge=24, le=2048, description="Enrolment: smallest accepted face (box side, pixels)."
    )
    min_sharpness: float = Field(
        20.0,
        ge=0,
        le=10_000,
        description="Enrolment: least variance of the Laplacian of the aligned crop (blur).",
    )
    max_yaw_deg: float = Field(
        40.0, gt=0, le=90, description="Enrolment: largest head turn, estimated from landmarks."
    )
    max_pitch_deg: float = Field(35.0, gt=0, le=90, description="Enrolment: largest head tilt up or down.")
    max_enrolled_templates: int = Field(
        5,
        ge=1,
        le=100,
        description="Enrolment keeps at most this many photos per identity (those it holds already count): "
        "the accepted photos are ranked by quality and the best kept; the others are reported as not kept.",
    )


class DecisionConfig(StrictModel):
    """[decision] — From per-frame matches to one access decision per passage."""

    votes: int = Field(
        3, ge=1, le=50, description="Matches of the same identity needed among the last `window`."
    )
    window: int = Field(5, ge=1, le=100, description="Frames of a track considered for the vote.")
    margin: float = Field(
        0.05, ge=0, le=1, description="Least lead of the best identity's score over the runner-up identity."
    )
    unknown_after_frames: int = Field(
        12,
        ge=1,
        le=10_000,
        description="A track with no decision after this many frames is announced `unknown`.",
    )
    reannounce_s: float = Field(
        30.0, ge=0, le=86_400, description="A person still in view is announced again after this long."
    )
    track_iou: float = Field(0.3, gt=0, lt=1, description="Overlap that ties a face to an existing track.")
    track_max_missed: int = Field(
        8,
        ge=0,
        le=1000,
        description="Frames a track survives without its face (occlusion, a missed detection).",
    )
    best_frames: int = Field(5, ge=1, le=100, description="Best-quality frames each track keeps.")

    @model_validator(mode="after")
    def _check(self) -> DecisionConfig:
        if self.votes > self.window:
            raise ValueError(f"decision.votes ({self.votes}) is more than decision.window ({self.window})")
        return self


class AdaptiveConfig(StrictModel):
    """[adaptive] — Template update from confident passes: a granted passage can teach its identity a
    new template (opt-in). Each one is recorded (event, score, margin) and can be listed and removed
    with `gallery templates ID`."""

    enabled: bool = Field(
        False, description="Add a template from a passage granted with the margins below (off by default)."
    )
    min_margin: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Least lead of the granted identity's mean score over the runner-up identity's "
        "(decision.margin is what a grant needs; this is what learning from it needs).",
    )
    min_quality: float = Field(
        0.60,
        ge=0,
        le=1,
        description="Least quality (size, sharpness, pose; 0 to 1) of the frame that becomes the template.",
    )
    min_enrolled_similarity: float = Field(
        0.50,
        ge=MATCH_THRESHOLD_MIN,
        le=MATCH_THRESHOLD_MAX,
        description="Least cosine similarity of the new template to one of the identity's *enrolled* templates. "
        "Bounds drift: a look-alike granted now and then cannot pull the identity towards itself step by step.",
    )
    max_per_identity: int = Field(
        3,
        ge=1,
        le=50,
        description="Adaptive templates kept per identity; the oldest goes first (enrolled ones never).",
    )
    min_interval_s: float = Field(
        3600.0,
        ge=0,
        le=30 * 86_400,
        description="Least time between two adaptive templates of one identity (one person standing in view, "
        "re-announced every reannounce_s, teaches one template, not a run of near-copies).",
    )
    require_liveness: bool = Field(
        True,
        description="Learn only from passages whose liveness passed; then liveness.enabled must be true. false: "
        "also learn without a liveness check (a photo held up to the camera that is granted is learned too).",
    )


class OutboxConfig(StrictModel):
    """[outbox] — Access events kept on disk until the broker acknowledges them."""

    max_events: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="Events kept at most; above it the oldest are dropped and counted.",
    )
    max_age_h: float = Field(
        168.0, gt=0, le=8760, description="Events older than this are dropped and counted (default a week)."
    )
    drain_s: float = Field(
        5.0, ge=0, le=60, description="At shutdown, time allowed to publish what is pending."
    )


class EventsConfig(StrictModel):
    """[events] — What access events carry."""

    face_crop: bool = Field(False, description="Include a JPEG face crop (base64) in each access event.")
    crop_quality: int = Field(85, ge=10, le=100, description="JPEG quality of that crop.")
    keep_crops_h: float = Field(
        0.0,
        ge=0,
        le=720,
        description="Keep each access event's face (aligned crop and embedding, encrypted with the gallery key, "
        "in {storage.dir}/sightings.db) for this many hours, so an operator can mark a wrong grant "
        '("this is not X": `gallery not-this EVENT_ID`, the not_this command) or enrol an unknown visitor '
        "who walked up (the enroll command with event_id). 0 = off (nothing kept); at most 720.",
    )
    keep_crops_max: int = Field(
        2000,
        ge=10,
        le=100_000,
        description="Faces kept at most (events.keep_crops_h and [unknowns] together, about 30 KB each, and "
        "30 KB more for each further view of an unknown face); the oldest are deleted first.",
    )
    walk_up_views: int = Field(
        3,
        ge=1,
        le=5,  # the face and appliance.sightings.store.MAX_VIEWS others
        description="Views of an unknown visitor's face kept with their event, for walk-up enrolment: the "
        "best-quality frame and up to this many minus one others that differ from it (a turn of the head, "
        "a step closer; cosine below 0.9) and still match it at match.threshold. Each goes through the "
        "enrolment checks, and the best are enrolled (up to gallery.max_enrolled_templates). 1 = the best "
        "frame only.",
    )


class UnknownsConfig(StrictModel):
    """[unknowns] — Unknown visitors (opt-in): faces decided `unknown` kept encrypted for a while and
    grouped by likeness, so an operator can see who comes often (`gallery unknowns`), enrol them
    (`gallery enroll-unknown`) or purge them. Everything expires at the retention."""

    enabled: bool = Field(False, description="Keep and cluster the faces decided unknown (off by default).")
    retention_h: float = Field(
        72.0, gt=0, le=720, description="Hours an unknown face (and a cluster with it) is kept; at most 720."
    )
    cluster_threshold: float = Field(
        0.55,
        ge=MATCH_THRESHOLD_MIN,
        le=MATCH_THRESHOLD_MAX,
        description="Cosine similarity to a cluster's centroid that joins a face to it (else it starts a new one).",
    )
    max_clusters: int = Field(
        200, ge=1, le=10_000, description="Clusters kept at most; the one seen least recently makes room."
    )
    max_crops_per_cluster: int = Field(
        5,
        ge=1,
        le=100,
        description="Best-quality crops kept per cluster (the other faces keep only their time).",
    )


class CommandsConfig(StrictModel):
    """[commands] — Remote commands on {prefix}/{device.id}/cmd/{name}."""

    enabled: bool = Field(True, description="Subscribe to commands (authorise them in the broker's ACL).")
    max_payload_kb: int = Field(
        4096, ge=1, le=65536, description="Larger command payloads are refused with an error result."
    )
    max_age_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="A command stamped (`ts`, RFC 3339) longer ago than this, or this far ahead of the "
        "appliance's clock, is refused as stale. Commands without `ts` are not checked.",
    )


class MetricsConfig(StrictModel):
    """[metrics] — Health figures in {prefix}/{device.id}/state and, opt-in, for Prometheus."""

    state_interval_s: float = Field(
        10.0, ge=1, le=3600, description="How often the retained state is republished."
    )
    prometheus: bool = Field(False, description="Serve Prometheus metrics on 127.0.0.1.")
    prometheus_port: int = Field(9108, ge=1024, le=65535, description="Port of the Prometheus endpoint.")


class UpdatesCanConfig(StrictModel):
    """[updates.can] — The CAN link that model packages arrive on, and the UDS server's timers."""

    interface: str = Field(
        "socketcan",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="python-can interface: socketcan on a Jetson (the link is brought up outside the "
        "daemon, e.g. `ip link set can0 up type can bitrate 500000`); virtual or serial for tests.",
    )
    channel: str = Field(
        "can0", min_length=1, max_length=256, description="python-can channel: can0, a serial device, …"
    )
    bitrate: int = Field(
        500_000,
        ge=10_000,
        le=1_000_000,
        description="Nominal bit rate in bit/s (interfaces that configure the controller themselves; "
        "socketcan takes it from `ip link`).",
    )
    fd: bool = Field(False, description="Use CAN FD frames (Xavier/Orin MTTCAN; not the Nano's MCP2515).")
    data_bitrate: Optional[int] = Field(
        None,
        ge=10_000,
        le=15_000_000,
        description="CAN FD data-phase bit rate in bit/s (bit-rate switching); required with fd.",
        json_schema_extra={"example": 2_000_000},
    )
    rx_id: int = Field(
        0x7E0,
        ge=0,
        le=0x1FFFFFFF,
        description="CAN id the appliance receives UDS requests on (0x7E0 = 2016; TOML also takes 0x7E0).",
    )
    tx_id: int = Field(
        0x7E8,
        ge=0,
        le=0x1FFFFFFF,
        description="CAN id the appliance answers on (0x7E8 = 2024).",
    )
    extended_ids: bool = Field(False, description="29-bit CAN ids instead of 11-bit ones.")
    block_size: int = Field(
        0,
        ge=0,
        le=255,
        description="ISO-TP block size in our flow control: consecutive frames the tester sends before "
        "waiting for the next flow control (0 = no limit).",
    )
    st_min_ms: float = Field(
        0.0,
        ge=0,
        le=127,
        description="ISO-TP STmin in our flow control: least gap between the tester's consecutive "
        "frames, in ms: 0, 0.1 to 0.9 in steps of 0.1, or whole ms 1 to 127. Raise it for controllers "
        "that drop back-to-back frames (MCP2515).",
    )
    max_frame_data: Optional[Literal[8, 12, 16, 20, 24, 32, 48, 64]] = Field(
        None,
        description="Data bytes per CAN frame we send: default 8 (classic) or 64 (fd).",
        json_schema_extra={"example": 64},
    )
    transfer_block_bytes: int = Field(
        4095,
        ge=64,
        le=65535,
        description="maxNumberOfBlockLength announced to the tester: bytes of one TransferData request "
        "(service id, counter, data), also the largest ISO-TP message accepted. Above 4095 the tester "
        "needs ISO 15765-2:2016 long first frames.",
    )
    session_timeout_s: float = Field(
        5.0,
        ge=0.2,
        le=3600,
        description="S3 timer: without a request for this long the programming session ends "
        "(back to the default session, security locked, the download paused).",
    )
    security_max_attempts: int = Field(
        3, ge=1, le=255, description="Wrong SecurityAccess keys before requests are delayed."
    )
    security_delay_s: float = Field(
        10.0,
        ge=0.1,
        le=86_400,
        description="After too many wrong keys, SecurityAccess is refused for this long.",
    )

    @model_validator(mode="after")
    def _check(self) -> UpdatesCanConfig:
        if self.fd and self.data_bitrate is None:
            raise ValueError("updates.can.fd needs updates.can.data_bitrate (the data-phase bit rate)")
        if not self.fd and self.data_bitrate is not None:
            raise ValueError("updates.can.data_bitrate is set but updates.can.fd is false")
        if self.data_bitrate is not None and self.data_bitrate < self.bitrate:
            raise ValueError(
                f"updates.can.data_bitrate ({self.data_bitrate}) is below updates.can.bitrate ({self.bitrate})"
            )
        if not self.fd and self.max_frame_data not in (None, 8):
            raise ValueError(
                f"updates.can.max_frame_data {self.max_frame_data} needs updates.can.fd (classic CAN carries 8)"
            )
        limit = 0x1FFFFFFF if self.extended_ids else 0x7FF
        for key, value in (("rx_id", self.rx_id), ("tx_id", self.tx_id)):
            if value > limit:
                raise ValueError(
                    f"updates.can.{key} 0x{value:X} does not fit {'a 29' if self.extended_ids else 'an 11'}-bit "
                    f"CAN id (at most 0x{limit:X}); set updates.can.extended_ids for 29-bit ids"
                )
        if self.rx_id == self.tx_id:
            raise ValueError(
                f"updates.can.rx_id and updates.can.tx_id are both 0x{self.rx_id:X}; they must differ"
            )
        if 0 < self.st_min_ms < 1:
            if abs(self.st_min_ms * 10 - round(self.st_min_ms * 10)) > 1e-9:
                raise ValueError(
                    f"updates.can.st_min_ms {self.st_min_ms} below 1 ms must be a multiple of 0.1 ms"
                )
        elif self.st_min_ms != int(self.st_min_ms):
            raise ValueError(f"updates.can.st_min_ms {self.st_min_ms} above 1 ms must be whole milliseconds")
        return self

    @property
    def frame_data_bytes(self) -> int:
        """Data bytes per CAN frame we send (8 classic, ``max_frame_data`` or 64 with FD)."""
        if self.max_frame_data is not None:
            return int(self.max_frame_data)
        return 64 if self.fd else 8


class UpdatesConfig(StrictModel):
    """[updates] — Model packages pushed over the CAN bus (UDS server, `face-appliance push-model`)."""

    enabled: bool = Field(False, description="Run the UDS server that receives model packages.")
    trusted_keys_dir: ConfigPath = Field(
        Path("/etc/face-appliance/trusted-keys"),
        description="Folder of the Ed25519 public keys whose package signatures are accepted.",
    )
    security_secret_file: Optional[ConfigPath] = Field(
        None,
        description="File holding the provisioned SecurityAccess secret (first line, at least 16 "
        "characters, e.g. `openssl rand -hex 32`); the key for a seed is HMAC-SHA256(secret, seed). "
        "Required when updates are enabled; may be a systemd credential.",
        json_schema_extra={"example": "${CREDENTIALS_DIRECTORY}/uds_secret"},
    )
    max_package_mb: int = Field(
        64, ge=1, le=4095, description="Largest package accepted (RequestDownload of more: refused)."
    )
    staging_dir: Optional[ConfigPath] = Field(
        None,
        description="Where an incoming package is received (resumable); default {storage.dir}/updates.",
        json_schema_extra={"example": "/var/lib/face-appliance/updates"},
    )
    health_frames: int = Field(
        30,
        ge=1,
        le=10000,
        description="Frames watched after a model switch before it is final (else rollback).",
    )
    health_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for those frames; without frames a self-test decides."
    )
    latency_factor: float = Field(
        3.0,
        ge=1.0,
        le=100.0,
        description="A new model may be at most this many times slower than the active one.",
    )
    can: UpdatesCanConfig = Field(default_factory=UpdatesCanConfig)

    @model_validator(mode="after")
    def _check(self) -> UpdatesConfig:
        if self.enabled and self.security_secret_file is None:
            raise ValueError(
                "updates.enabled needs updates.security_secret_file (the SecurityAccess secret shared with "
                "push-model)"
            )
        return self

    @property
    def max_package_bytes(self) -> int:
        """``max_package_mb`` in bytes."""
        return self.max_package_mb * 1024 * 1024


class CalibrationConfig(StrictModel):
    """[calibration] — INT8 models made by `face-appliance calibrate`, and the gate they must pass to be installed."""

    min_cosine_mean: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Embedder: least mean cosine between INT8 and FP32 embeddings of the same aligned faces.",
    )
    max_tar_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Embedder: largest drop of the true accept rate at FAR 1e-2 and 1e-3, INT8 against "
        "FP32 (0.01 = 1 point).",
    )
    min_detection_agreement: float = Field(
        0.98,
        gt=0,
        le=1,
        description="MTCNN: least share of the faces FP32 finds that INT8 finds too (box IoU >= 0.8).",
    )
    min_liveness_agreement: float = Field(
        0.98,
        gt=0,
        le=1,
        description="Liveness: least share of faces given the same live/spoof decision (at "
        "liveness.threshold) by INT8 and FP32.",
    )
    int8_dir: Optional[ConfigPath] = Field(
        None,
        description="Where INT8 models that passed the gate are installed, and read from with "
        "backend.int8; default {models.dir}/int8.",
        json_schema_extra={"example": "/var/lib/face-appliance/models/int8"},
    )


class LoggingConfig(StrictModel):
    """[logging] — Log output (to stderr; journald adds timestamps under systemd)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


def _one_form(config: StrictModel, single: str, many: str, thing: str) -> None:
    """``[single]`` or ``[[many]]`` tables, not both (``thing``: what one table describes)."""
    if getattr(config, many) is not None and single in config.model_fields_set:
        raise ValueError(
            f"[{single}] and [[{many}]] are both given; keep [{single}] for one {thing}, or move its keys "
            f"into one more [[{many}]] table with an id of its own"
        )


def _known_cameras(what: str, named: Sequence[str], cameras: Set[str]) -> None:
    """Every camera ``named`` is one of ``cameras``, else a ValueError beginning with ``what``."""
    unknown = [camera for camera in named if camera not in cameras]
    if unknown:
        raise ValueError(
            f"{what} camera(s) {', '.join(map(repr, unknown))}, which are not configured (the cameras: "
            f"{', '.join(sorted(cameras))})"
        )


def _joins_line(reader: CredentialReaderConfig, line: List[CredentialReaderConfig]) -> None:
    """Add ``reader`` to the readers already on its port (one RS-485 line, one control panel polling them
    all): an address of its own, the line's ``baud_rate``, at most :data:`MAX_READERS_PER_LINE`;
    else a ValueError naming both readers and the key."""
    port = reader.port
    for other in line:
        if other.address == reader.address:
            raise ValueError(
                f"readers {other.id!r} and {reader.id!r} both name address {reader.address} on port {port}; "
                "readers sharing a serial port (one RS-485 line) each need an address of their own: set "
                "another address on one of them, and the same on the reader itself"
            )
    if line and line[0].baud_rate != reader.baud_rate:
        raise ValueError(
            f"readers {line[0].id!r} and {reader.id!r} share port {port} but not its baud_rate "
            f"({line[0].baud_rate} and {reader.baud_rate}); the readers on one line run at one speed: set "
            "the same baud_rate on both, and on the readers themselves"
        )
    if len(line) == MAX_READERS_PER_LINE:
        raise ValueError(
            f"reader {reader.id!r} would be reader {MAX_READERS_PER_LINE + 1} on port {port}; one line "
            f"polls at most {MAX_READERS_PER_LINE}: put the others on a serial port of their own"
        )
    line.append(reader)


#: ``[[key]]`` → (what one table describes, where its id goes, what to do instead of an empty list).
_TABLE_WORDS = {
    "cameras": (
        "camera",
        "events carry it as camera_id",
        "leave cameras out and describe a single camera in [camera]",
    ),
    "credential_readers": (
        "reader",
        "the cards and PINs it presents carry it",
        "describe one in [credential_reader]",
    ),
    "doors": ("door", "its door events carry it as door_id", "describe one door in [door]"),
}


def _check_table_ids(tables: List[Any], key: str, thing: str, carried: str) -> None:
    """Every ``[[key]]`` table names its ``thing`` with an id of its own (``carried``: where the id goes).

    Raises:
        ValueError: a table without an id, or with the id of an earlier one.
    """
    first_of: Dict[str, int] = {}
    for index, table in enumerate(tables):
        if "id" not in table.model_fields_set:
            raise ValueError(
                f'{key}[{index}] has no id: every [[{key}]] table names its {thing} (e.g. id = "entry"); {carried}'
            )
        if table.id in first_of:
            raise ValueError(
                f"{key}[{index}] has the id {table.id!r} of {key}[{first_of[table.id]}]; give every {thing} an id "
                "of its own"
            )
        first_of[table.id] = index


class ApplianceConfig(StrictModel):
    """The whole configuration file."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    cameras: Optional[List[CameraConfig]] = Field(
        None,
        description="Several cameras on one appliance, instead of [camera]: one [[cameras]] table per "
        "camera, with the keys of [camera] and an id of its own (required, unique). The models, the "
        "gallery, the decision and access settings and the door are shared by every camera; each "
        "camera has its own tracks and decisions, and its events carry its id as camera_id.",
        json_schema_extra={
            "example": [{"id": "entry", "source": "/dev/video0"}, {"id": "exit", "source": "/dev/video1"}]
        },
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    unknowns: UnknownsConfig = Field(default_factory=UnknownsConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    door: DoorConfig = Field(default_factory=DoorConfig)
    doors: Optional[List[DoorEntryConfig]] = Field(
        None,
        description="Several doors on one appliance, instead of [door]: one [[doors]] table per door, with "
        "the keys of [door] (its subtables as dotted keys, e.g. relay.line = 12), an id of its own "
        "(required, unique) and the cameras whose grants open it — a turnstile's two ways, or two doors "
        "each with its camera. Every door has its own relay, inputs, unlock windows and owner thread.",
        json_schema_extra={
            "example": [
                {"id": "entry", "cameras": ["entry"], "relay.line": 12},
                {"id": "exit", "cameras": ["exit"], "relay.line": 16},
            ]
        },
    )
    osdp: OsdpConfig = Field(default_factory=OsdpConfig)
    credential_reader: CredentialReaderConfig = Field(default_factory=CredentialReaderConfig)
    credential_readers: Optional[List[CredentialReaderEntryConfig]] = Field(
        None,
        description="Several card readers, instead of [credential_reader]: one [[credential_readers]] table "
        "per reader, with the keys of [credential_reader], an id of its own (required, unique) and the "
        "cameras it stands at — a turnstile's entry and exit readers. Readers may share a port (one RS-485 "
        "line, polled by one control panel) at addresses of their own and one baud_rate.",
        json_schema_extra={
            "example": [
                {"id": "entry-reader", "port": "/dev/ttyUSB1", "address": 0, "cameras": ["entry"]},
                {"id": "exit-reader", "port": "/dev/ttyUSB1", "address": 1, "cameras": ["exit"]},
            ]
        },
    )
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("cameras", "credential_readers", "doors")
    @classmethod
    def _tables_named(cls, tables: Optional[List[Any]], info: ValidationInfo) -> Optional[List[Any]]:
        """Each ``[[key]]`` list: not empty, every table with an id of its own (:func:`_check_table_ids`)."""
        thing, carried, instead = _TABLE_WORDS[info.field_name]
        if tables is not None and not tables:
            raise ValueError(f"an empty list; give one [[{info.field_name}]] table per {thing}, or {instead}")
        _check_table_ids(tables or [], info.field_name, thing, carried)
        return tables

    @model_validator(mode="after")
    def _doors_fit_together(self) -> ApplianceConfig:
        _one_form(self, "door", "doors", "door")
        doors = self.configured_doors
        cameras = {camera.id for camera in self.configured_cameras}
        places: Dict[Any, str] = {}
        for door in doors:
            _known_cameras(f"door {door.id!r} opens for", door.cameras, cameras)
            if len(doors) > 1 and not door.cameras:
                raise ValueError(
                    f"door {door.id!r} names no cameras: with several doors each names the cameras whose grants "
                    'open it (cameras = ["entry"]), or every grant would open every door'
                )
            for where, section in door.line_places():
                if where in places:
                    raise ValueError(
                        f"door {door.id!r}: {section}.line ({where[1]!r} on {where[0] or 'the header'}) is "
                        f"already a line of door {places[where]!r}; each door needs lines of its own"
                    )
                places[where] = door.id
        modes = {door.jetson_pin_mode for door in doors if door.backend == "jetson-gpio"}
        if len(modes) > 1:
            raise ValueError(
                "the jetson-gpio doors number their pins differently (jetson_pin_mode "
                f"{', '.join(sorted(modes))}); Jetson.GPIO has one numbering per process: use the same"
            )
        return self

    @model_validator(mode="after")
    def _one_camera_form(self) -> ApplianceConfig:
        _one_form(self, "camera", "cameras", "camera")
        return self

    @model_validator(mode="after")
    def _passback_needs_both_ways(self) -> ApplianceConfig:
        passback = self.access.anti_passback
        if self.device.id in passback.area_doors:
            raise ValueError(
                f"access.anti_passback.area_doors names this appliance ({self.device.id!r}); list the "
                "area's other doors only"
            )
        if passback.area_doors and passback.area_events == "signed" and self.fleet.fleet_key_file is None:
            raise ValueError(
                "access.anti_passback.area_doors takes only the other doors' events signed with the site's "
                "fleet key (area_events = 'signed'), but fleet.fleet_key_file is not set; give every door "
                "of the area the site's fleet key (fleet.fleet_key_file; `fleet init` creates it), or set "
                "access.anti_passback.area_events = 'unsigned' to rely on the broker's ACL alone"
            )
        directions = {camera.direction for camera in self.configured_cameras} - {"none"}
        # With other doors in the area, one way here is enough (the way back may be another door's).
        enough = bool(directions) if passback.area_doors else {"in", "out"} <= directions
        if passback.mode != "off" and not enough:
            found = ", ".join(f"{c.id}: {c.direction}" for c in self.configured_cameras)
            raise ValueError(
                f"access.anti_passback.mode = {passback.mode!r} follows people in and out, but the cameras "
                f"({found}) do not see both ways; set direction = 'in' on the entry camera and "
                "direction = 'out' on the exit camera ([[cameras]]), name the area's other doors in "
                "access.anti_passback.area_doors, or set the mode to 'off'"
            )
        return self

    @model_validator(mode="after")
    def _readers_fit_together(self) -> ApplianceConfig:
        _one_form(self, "credential_reader", "credential_readers", "reader")
        readers, require = self.configured_readers, self.access.second_factor.require
        if require != "off" and not readers:
            raise ValueError(
                f"access.second_factor.require = {require!r} asks for a card or PIN at the door, but no "
                "reader takes them: describe the card reader in [credential_reader] (enabled = true), "
                "or set require = 'off'"
            )
        without_face = self.access.without_face.require
        if without_face != "off" and not readers:
            raise ValueError(
                f"access.without_face.require = {without_face!r} lets people without a face in by card, but "
                "no reader takes cards: describe the card reader in [credential_reader] (enabled = true), "
                "or set require = 'off'"
            )
        cameras = {camera.id for camera in self.configured_cameras}
        doors = {door.id for door in self.configured_doors}
        lines: Dict[str, List[CredentialReaderConfig]] = {}
        for reader in readers:
            _known_cameras(f"reader {reader.id!r} stands at", reader.cameras, cameras)
            if without_face != "off" and len(reader.cameras or cameras) != 1:
                raise ValueError(
                    f"access.without_face.require = {without_face!r}: a card shown at reader {reader.id!r} "
                    f"must count at one camera (its door, its direction), but the reader stands at "
                    f"{len(reader.cameras or cameras)} cameras; name the one it stands at in its cameras"
                )
            if reader.id in doors:
                raise ValueError(
                    f"reader id {reader.id!r} is also a door's id; both key …/state → door: give the reader "
                    "an id of its own"
                )
            _joins_line(reader, lines.setdefault(str(reader.port), []))
        return self

    @property
    def configured_readers(self) -> List[CredentialReaderConfig]:
        """The card readers this appliance polls, in the file's order: the enabled
        ``[[credential_readers]]`` tables, or ``[credential_reader]`` when enabled; none otherwise."""
        tables: List[CredentialReaderConfig] = (
            list(self.credential_readers) if self.credential_readers is not None else [self.credential_reader]
        )
        return [reader for reader in tables if reader.enabled]

    @property
    def reader_cameras(self) -> Dict[str, List[str]]:
        """Reader id → the cameras it stands at (empty: every camera), of the card readers polled."""
        return {reader.id: list(reader.cameras) for reader in self.configured_readers}

    @model_validator(mode="after")
    def _adaptive_needs_liveness(self) -> ApplianceConfig:
        if self.adaptive.enabled and self.adaptive.require_liveness and not self.liveness.enabled:
            raise ValueError(
                "adaptive.enabled learns only from live passages (adaptive.require_liveness) but liveness.enabled "
                "is false; enable liveness, or set adaptive.require_liveness = false to learn without it"
            )
        return self

    @property
    def configured_cameras(self) -> List[CameraConfig]:
        """The cameras this appliance runs, in the file's order: the ``[[cameras]]`` tables, or the
        single ``[camera]``."""
        return list(self.cameras) if self.cameras is not None else [self.camera]

    @property
    def configured_doors(self) -> List[DoorConfig]:
        """The doors this appliance drives, in the file's order: the enabled ``[[doors]]`` tables, or
        ``[door]`` when enabled; none otherwise."""
        doors: List[DoorConfig] = list(self.doors) if self.doors is not None else [self.door]
        return [door for door in doors if door.enabled]

    @property
    def camera_directions(self) -> Dict[str, str]:
        """Camera id → ``in`` / ``out``, of the cameras that have a direction (anti-passback's)."""
        return {c.id: c.direction for c in self.configured_cameras if c.direction != "none"}

    @property
    def engine_dir(self) -> Path:
        """Where TensorRT engines are cached."""
        return self.backend.tensorrt.engine_dir or self.storage.dir / "engines"

    @property
    def calibration_dir(self) -> Path:
        """Where the INT8 calibration sets for the TensorRT engines are."""
        return self.backend.tensorrt.calibration_dir or self.storage.dir / "calibration"

    @property
    def int8_dir(self) -> Path:
        """Where gate-passed INT8 (QDQ) models are installed (``calibration.int8_dir`` or {models.dir}/int8)."""
        return self.calibration.int8_dir or self.models.dir / "int8"

    @property
    def gallery_key_file(self) -> Path:
        """The gallery's encryption key file."""
        return self.gallery.key_file or self.storage.dir / "gallery.key"

    @property
    def updates_staging_dir(self) -> Path:
        """Where incoming model packages are received (``updates.staging_dir`` or {storage.dir}/updates)."""
        return self.updates.staging_dir or self.storage.dir / "updates"

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"face-appliance-{self.device.id}"

    @property
    def topic_root(self) -> str:
        """``{mqtt.prefix}/{device.id}``: the root of every topic of this appliance."""
        return f"{self.mqtt.prefix}/{self.device.id}"


def config_schema() -> Dict[str, Any]:
    """The JSON schema of :class:`ApplianceConfig` (what ``config/appliance.schema.json`` holds)."""
    schema = ApplianceConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "face-appliance configuration"
    return schema


# -- the documented default file ---------------------------------------------------------------------

_HEADER = """\
# Face access appliance — configuration (TOML).
#
# Every key is listed with its default. Keys that are commented out have no default; the value shown
# is an example. Relative paths are taken from this file's folder; a path may start with
# ${CREDENTIALS_DIRECTORY} to read a systemd credential (LoadCredential=). Check a file with
#   face-appliance config check --config /etc/face-appliance/appliance.toml
# This file is generated from the configuration model (face-appliance config default).
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Path):
        value = os.fspath(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _table_list_model(annotation: Any) -> Optional[type]:
    """The item model of an optional list of tables (``Optional[List[CameraConfig]]``), else ``None``."""
    for argument in get_args(annotation):
        if get_origin(argument) in (list, List):
            items = get_args(argument)
            if items and isinstance(items[0], type) and issubclass(items[0], StrictModel):
                return items[0]
    return None


def _render_table_list(name: str, field: Any, path: Tuple[str, ...], lines: List[str]) -> None:
    """An array of tables (``[[cameras]]``), absent by default: its description and its example, commented."""
    key = ".".join((*path, name))
    lines.append("")
    lines.append(f"# [[{key}]] — {field.description}")
    examples = (
        (field.json_schema_extra or {}).get("example") if isinstance(field.json_schema_extra, dict) else None
    )
    lines.append("# Default: none. For example:")
    for example in examples or []:
        lines.append(f"# [[{key}]]")
        lines.extend(f"# {item} = {_toml_value(value)}" for item, value in example.items())


def _render_section(model: type, path: Tuple[str, ...], lines: List[str]) -> None:
    tables: List[Tuple[str, Any]] = []
    if path:
        lines.append("")
        lines.append(f"[{'.'.join(path)}]")
        summary = (model.__doc__ or "").strip().split("\n\n", 1)[0]  # the first paragraph, on one line
        doc = " ".join(summary.split("—", 1)[-1].split())
        if doc and doc != f"[{'.'.join(path)}]":
            lines.append(f"# {doc}")
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, StrictModel):
            tables.append((name, annotation))
            continue
        if _table_list_model(annotation) is not None:
            tables.append((name, field))
            continue
        description = field.description or ""
        lines.append(f"# {description}")
        example = (
            (field.json_schema_extra or {}).get("example")
            if isinstance(field.json_schema_extra, dict)
            else None
        )
        if field.default_factory is not None or field.default is None:
            lines.append(f"# {name} = {_toml_value(example)}")
        else:
            default = (
                field.default.get_secret_value() if isinstance(field.default, SecretStr) else field.default
            )
            lines.append(f"{name} = {_toml_value(default)}")
    for name, section in tables:
        if isinstance(section, type):
            _render_section(section, (*path, name), lines)
        else:
            _render_table_list(name, section, path, lines)


def render_default_toml() -> str:
    """The documented default configuration file, generated from the models."""
    lines: List[str] = [_HEADER.rstrip("\n")]
    _render_section(ApplianceConfig, (), lines)
    return "\n".join(lines).strip("\n") + "\n"
