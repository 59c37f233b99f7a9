"""The TensorRT engine cache, manifests, precision choice and optimization profiles (no TensorRT needed)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from engines.registry import MODELS, TensorSpec, get_model
from engines.tensorrt.cache import (
    BUILT_PRECISIONS,
    KEY_LENGTH,
    NETWORK_FP16,
    NETWORK_ONNX,
    NETWORK_QDQ,
    EngineManifest,
    EngineRequest,
    EngineTensor,
    ProfileRange,
    TensorRTFeatures,
    cache_key,
    engine_path,
    fast_precisions,
    file_sha256_or_none,
    lookup,
    make_manifest,
    manifest_path,
    optimization_profile,
    plan_precision,
    prune,
    sha256_bytes,
    store,
    tensorrt_features,
    timing_cache_path,
    utc_timestamp,
)
from engines.tensorrt.platform import PlatformInfo, parse_l4t_release, read_l4t_version

ORIN = PlatformInfo("8.5.2.2", "Orin", (8, 7), "35.4.1")
NANO = PlatformInfo("8.2.1.8", "NVIDIA Tegra X1", (5, 3), "32.7.1")
XAVIER = PlatformInfo("8.5.2.2", "Xavier", (7, 2), "35.4.1")
ORIN_10 = PlatformInfo("10.3.0.30", "Orin", (8, 7), "36.4.3")
THOR_10 = PlatformInfo("10.13.3.9", "NVIDIA Thor", (11, 0), "38.2.0")
THOR_11 = PlatformInfo("11.4.0.106", "NVIDIA Thor", (11, 0), "38.4.0")
ORIN_11 = PlatformInfo("11.4.0.106", "Orin", (8, 7), "38.4.0")
ONNX = b"pretend these are ONNX bytes"
ENGINE = b"\x00serialized engine\xff" * 64
PROFILE = (ProfileRange("input0", (1, 3, 112, 112), (4, 3, 112, 112), (16, 3, 112, 112)),)
TENSORS = (
    EngineTensor("input0", "input", (-1, 3, 112, 112), "float32"),
    EngineTensor("output0", "output", (-1, 128), "float32"),
)


def make_request(**changes: object) -> EngineRequest:
    request = EngineRequest(
        model="mobilefacenet",
        onnx_sha256=sha256_bytes(ONNX),
        platform=ORIN,
        precision="auto",
        dla_core=None,
        profiles=PROFILE,
        calibration_sha256=None,
    )
    return replace(request, **changes)  # type: ignore[arg-type]


def store_engine(engine_dir: Path, request: EngineRequest, engine: bytes = ENGINE) -> Path:
    manifest = make_manifest(request, engine, TENSORS, "fp16", "auto: no INT8 data: building FP16")
    return store(engine_dir, manifest, engine)


def leftovers(directory: Path) -> List[Path]:
    return [path for path in directory.rglob("*") if path.name.startswith(".") or path.suffix == ".tmp"]


# -- the key -----------------------------------------------------------------------------------


class TestCacheKey:
    def test_is_stable_and_hex(self) -> None:
        first, second = make_request().key, make_request().key
        assert first == second
        assert re.fullmatch(f"[0-9a-f]{{{KEY_LENGTH}}}", first)

    @pytest.mark.parametrize(
        "change",
        [
            {"onnx_sha256": sha256_bytes(b"another model")},
            {"platform": replace(ORIN, tensorrt_version="8.6.1")},
            {"platform": replace(ORIN, gpu_name="Xavier")},
            {"platform": replace(ORIN, compute_capability=(7, 2))},
            {"precision": "fp16"},
            {"dla_core": 0},
            {"calibration_sha256": sha256_bytes(b"calibration")},
            {"int8_onnx_sha256": sha256_bytes(b"qdq model")},
            {"fp16_converter": "onnxconverter-common 1.16.0"},
            {"profiles": (replace(PROFILE[0], max=(32, 3, 112, 112)),)},
        ],
        ids=[
            "onnx",
            "tensorrt",
            "gpu-name",
            "compute-capability",
            "precision",
            "dla",
            "calibration",
            "qdq-model",
            "fp16-converter",
            "profile",
        ],
    )
    def test_changes_with_every_input(self, change: Dict[str, object]) -> None:
        assert make_request(**change).key != make_request().key

    def test_ignores_the_l4t_release_and_profile_order(self) -> None:
        # L4T is checked by lookup (a rebuild reason), but is not part of the key.
        assert make_request(platform=replace(ORIN, l4t_version="35.5.0")).key == make_request().key
        a = ProfileRange("a", (1, 2), (1, 2), (1, 2))
        b = ProfileRange("b", (1, 3), (2, 3), (4, 3))
        assert make_request(profiles=(a, b)).key == make_request(profiles=(b, a)).key

    def test_function_and_property_agree(self) -> None:
        request = make_request()
        assert request.key == cache_key(
            request.onnx_sha256,
            ORIN.tensorrt_version,
            ORIN.gpu_name,
            ORIN.compute_capability,
            "auto",
            None,
            PROFILE,
            None,
        )

    @pytest.mark.parametrize(
        "change, message",
        [
            ({"precision": "bf16"}, "precision"),
            ({"dla_core": -1}, "dla_core"),
            ({"model": "../escape"}, "directory"),
            ({"model": ""}, "directory"),
        ],
    )
    def test_request_validation(self, change: Dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            make_request(**change)


class TestProfileRange:
    def test_contains_and_describe(self) -> None:
        profile = PROFILE[0]
        assert profile.contains((1, 3, 112, 112))
        assert profile.contains((16, 3, 112, 112))
        assert not profile.contains((17, 3, 112, 112))
        assert not profile.contains((1, 3, 112))
        assert profile.describe() == "input0 min 1x3x112x112 opt 4x3x112x112 max 16x3x112x112"

    @pytest.mark.parametrize(
        "low, mid, high",
        [((2,), (1,), (3,)), ((1,), (4,), (3,)), ((0,), (1,), (1,)), ((1, 2), (1,), (1,))],
    )
    def test_rejects_unordered_or_ragged(self, low: tuple, mid: tuple, high: tuple) -> None:
        with pytest.raises(ValueError, match="profile for 'x'"):
            ProfileRange("x", low, mid, high)

    def test_json_round_trip(self) -> None:
        assert ProfileRange.from_json(json.loads(json.dumps(PROFILE[0].to_json()))) == PROFILE[0]


# -- manifest ----------------------------------------------------------------------------------


class TestManifest:
    def test_round_trip(self) -> None:
        manifest = make_manifest(make_request(dla_core=1), ENGINE, TENSORS, "int8", "why", "dla:1", 12.3456)
        again = EngineManifest.loads(manifest.dumps())
        assert again == manifest
        assert again.platform == ORIN
        assert again.engine_size == len(ENGINE)
        assert again.engine_sha256 == sha256_bytes(ENGINE)
        assert again.build_seconds == 12.346
        assert again.target == "dla:1"
        data = json.loads(manifest.dumps())
        for field in (
            "tensorrt_version",
            "gpu_name",
            "compute_capability",
            "l4t_version",
            "precision",
            "requested_precision",
            "dla_core",
            "tensors",
            "profiles",
            "onnx_sha256",
            "calibration_sha256",
            "created",
        ):
            assert field in data

    def test_records_which_onnx_the_engine_came_from(self) -> None:
        request = make_request(
            int8_onnx_sha256=sha256_bytes(b"qdq"), int8_onnx_path="/models/int8/x.int8.onnx"
        )
        manifest = make_manifest(
            request, ENGINE, TENSORS, "int8", "why", network=NETWORK_QDQ, network_sha256=sha256_bytes(b"qdq")
        )
        again = EngineManifest.loads(manifest.dumps())
        assert again == manifest and again.schema == 2
        assert (again.network, again.network_sha256, again.int8_onnx_sha256) == (
            NETWORK_QDQ,
            sha256_bytes(b"qdq"),
            sha256_bytes(b"qdq"),
        )
        # The path is where the model is, not what it is: not part of the key.
        assert request.key == replace(request, int8_onnx_path=None).key
        with pytest.raises(ValueError, match="network"):
            make_manifest(request, ENGINE, TENSORS, "int8", "why", network="tflite")

    def test_schema_1_manifests_are_read_as_built_from_the_registry_onnx(self) -> None:
        """Engines cached by the previous release keep their keys and load (no needless rebuild)."""
        manifest = make_manifest(make_request(), ENGINE, TENSORS, "fp16", "why")
        data = json.loads(manifest.dumps())
        for name in ("network", "network_sha256", "int8_onnx_sha256", "fp16_converter"):
            del data[name]
        data["schema"] = 1
        old = EngineManifest.from_json(data)
        assert (old.network, old.network_sha256, old.key) == (
            NETWORK_ONNX,
            manifest.onnx_sha256,
            make_request().key,
        )

    def test_records_what_the_request_names(self) -> None:
        request = make_request(calibration_sha256=sha256_bytes(b"cal"), precision="int8")
        manifest = make_manifest(request, ENGINE, TENSORS, "int8", "INT8")
        assert manifest.key == request.key
        assert manifest.requested_precision == "int8"
        assert manifest.calibration_sha256 == sha256_bytes(b"cal")
        assert manifest.profiles == PROFILE
        assert manifest.tensors == TENSORS
        assert manifest.l4t_version == "35.4.1"

    def test_rejects_an_unknown_built_precision(self) -> None:
        with pytest.raises(ValueError, match="built precision"):
            make_manifest(make_request(), ENGINE, TENSORS, "auto", "no")

    @pytest.mark.parametrize(
        "mutate, message",
        [
            (lambda d: d.pop("gpu_name"), "malformed"),
            (lambda d: d.update(schema=99), "schema 99"),
            (lambda d: d.update(compute_capability=[8]), "compute_capability"),
            (lambda d: d.update(tensors="nope"), "malformed"),
            (lambda d: d.update(engine_size="many"), "invalid literal"),
        ],
    )
    def test_malformed(self, mutate: object, message: str) -> None:
        data = make_manifest(make_request(), ENGINE, TENSORS, "fp16", "why").to_json()
        mutate(data)  # type: ignore[operator]
        with pytest.raises(ValueError, match=message):
            EngineManifest.from_json(data)

    @pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
    def test_not_an_object(self, text: str) -> None:
        with pytest.raises(ValueError):
            EngineManifest.loads(text)

    def test_timestamp_is_rfc3339_utc_with_milliseconds(self) -> None:
        moment = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=timezone.utc)
        assert utc_timestamp(moment) == "2024-05-01T12:30:45.123Z"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_timestamp())


# -- store and lookup --------------------------------------------------------------------------


class TestStoreAndLookup:
    def test_layout_and_hit(self, tmp_path: Path) -> None:
        request = make_request()
        path = store_engine(tmp_path, request)
        assert path == tmp_path / "mobilefacenet" / f"{request.key}.engine"
        assert path == engine_path(tmp_path, "mobilefacenet", request.key)
        assert manifest_path(tmp_path, "mobilefacenet", request.key).is_file()
        assert path.read_bytes() == ENGINE
        assert leftovers(tmp_path) == []
        found = lookup(tmp_path, request, verify_digest=True)
        assert found.hit and found.path == path and found.reason is None
        assert found.manifest is not None and found.manifest.precision == "fp16"

    def test_store_overwrites_atomically(self, tmp_path: Path) -> None:
        request = make_request()
        store_engine(tmp_path, request)
        store_engine(tmp_path, request, ENGINE + b"v2")
        found = lookup(tmp_path, request, verify_digest=True)
        assert found.hit and found.path is not None and found.path.read_bytes() == ENGINE + b"v2"
        assert leftovers(tmp_path) == []

    def test_store_refuses_bytes_the_manifest_does_not_describe(self, tmp_path: Path) -> None:
        manifest = make_manifest(make_request(), ENGINE, TENSORS, "fp16", "why")
        with pytest.raises(ValueError, match="does not describe"):
            store(tmp_path, manifest, ENGINE + b"!")
        assert not (tmp_path / "mobilefacenet").exists()

    def test_miss_on_an_empty_cache(self, tmp_path: Path) -> None:
        found = lookup(tmp_path / "engines", make_request())
        assert not found.hit and found.path is None
        assert found.reason is not None
        assert "mobilefacenet: no engine cached for key" in found.reason and "does not exist" in found.reason

    @pytest.mark.parametrize(
        "running, expected",
        [
            (replace(ORIN, tensorrt_version="8.6.1"), "built with TensorRT 8.5.2.2, this device runs 8.6.1"),
            (
                replace(ORIN, gpu_name="Xavier", compute_capability=(7, 2)),
                "built for Orin (SM 8.7), this device has Xavier (SM 7.2)",
            ),
        ],
        ids=["tensorrt-upgrade", "other-gpu"],
    )
    def test_platform_change_is_explained(self, tmp_path: Path, running: PlatformInfo, expected: str) -> None:
        store_engine(tmp_path, make_request())
        found = lookup(tmp_path, make_request(platform=running))
        assert not found.hit
        assert found.reason is not None and expected in found.reason
        assert found.manifest is not None and found.manifest.platform == ORIN
        assert len(found.stale) == 1

    @pytest.mark.parametrize(
        "change, expected",
        [
            ({"onnx_sha256": sha256_bytes(b"new model")}, "the ONNX model changed"),
            ({"precision": "fp32"}, "precision 'fp32' is asked for"),
            ({"dla_core": 0}, "DLA core 0 is asked for"),
            ({"profiles": (replace(PROFILE[0], max=(32, 3, 112, 112)),)}, "optimization profiles differ"),
            ({"calibration_sha256": sha256_bytes(b"cal")}, "INT8 calibration data differs"),
            ({"int8_onnx_sha256": sha256_bytes(b"qdq")}, "the Q/DQ INT8 model differs (cached none"),
            ({"fp16_converter": "onnxconverter-common 1.16.0"}, "the FP16 ONNX converter differs"),
        ],
    )
    def test_request_change_is_explained(
        self, tmp_path: Path, change: Dict[str, object], expected: str
    ) -> None:
        store_engine(tmp_path, make_request())
        found = lookup(tmp_path, make_request(**change))
        assert not found.hit and found.reason is not None and expected in found.reason

    def test_l4t_change_means_rebuild(self, tmp_path: Path) -> None:
        store_engine(tmp_path, make_request())
        found = lookup(tmp_path, make_request(platform=replace(ORIN, l4t_version="35.5.0")))
        assert not found.hit
        assert found.reason is not None
        assert "built on L4T 35.4.1, this device runs L4T 35.5.0" in found.reason

    def test_the_closest_stale_manifest_is_named(self, tmp_path: Path) -> None:
        store_engine(tmp_path, make_request(precision="fp32", onnx_sha256=sha256_bytes(b"old")))
        store_engine(tmp_path, make_request(precision="fp32"))
        found = lookup(tmp_path, make_request())
        assert found.reason is not None
        assert "precision 'auto' is asked for" in found.reason
        assert "ONNX model changed" not in found.reason
        assert len(found.stale) == 2

    def test_truncated_engine(self, tmp_path: Path) -> None:
        path = store_engine(tmp_path, make_request())
        path.write_bytes(ENGINE[:10])
        found = lookup(tmp_path, make_request())
        assert not found.hit and found.reason is not None and "has 10 bytes" in found.reason

    def test_corrupted_engine_found_with_digest_check(self, tmp_path: Path) -> None:
        path = store_engine(tmp_path, make_request())
        path.write_bytes(bytes(reversed(ENGINE)))
        assert lookup(tmp_path, make_request()).hit  # same size: only the digest tells
        found = lookup(tmp_path, make_request(), verify_digest=True)
        assert not found.hit and found.reason is not None and "sha256" in found.reason

    def test_missing_engine_file(self, tmp_path: Path) -> None:
        store_engine(tmp_path, make_request()).unlink()
        found = lookup(tmp_path, make_request())
        assert not found.hit and found.reason is not None and "unreadable" in found.reason

    def test_unreadable_manifest(self, tmp_path: Path) -> None:
        request = make_request()
        store_engine(tmp_path, request)
        manifest_path(tmp_path, request.model, request.key).write_text("{broken", encoding="utf-8")
        found = lookup(tmp_path, request)
        assert not found.hit and found.reason is not None and "unusable" in found.reason

    def test_manifest_under_the_wrong_name(self, tmp_path: Path) -> None:
        request = make_request()
        other = make_request(precision="fp16")
        store_engine(tmp_path, other)
        source = manifest_path(tmp_path, other.model, other.key)
        data = json.loads(source.read_text(encoding="utf-8"))
        data.update(requested_precision="auto")  # everything fits except the recorded key
        manifest_path(tmp_path, request.model, request.key).write_text(json.dumps(data), encoding="utf-8")
        engine_path(tmp_path, other.model, other.key).rename(
            engine_path(tmp_path, request.model, request.key)
        )
        found = lookup(tmp_path, request)
        assert not found.hit and found.reason is not None and "names key" in found.reason

    def test_prune_keeps_only_the_named_keys(self, tmp_path: Path) -> None:
        keep = make_request()
        old = make_request(precision="fp32")
        store_engine(tmp_path, keep)
        store_engine(tmp_path, old)
        removed = prune(tmp_path, "mobilefacenet", [keep.key])
        assert sorted(p.name for p in removed) == sorted([f"{old.key}.engine", f"{old.key}.json"])
        assert lookup(tmp_path, keep).hit
        assert prune(tmp_path, "nothing-here", []) == []

    def test_timing_cache_path_is_per_platform(self, tmp_path: Path) -> None:
        path = timing_cache_path(tmp_path, PlatformInfo("10.3.0", "NVIDIA GeForce RTX 3060 / Ti", (8, 6)))
        assert path == tmp_path / "timing-trt10.3.0-nvidia-geforce-rtx-3060-ti-sm86.cache"
        assert timing_cache_path(tmp_path, ORIN) != timing_cache_path(tmp_path, NANO)

    def test_file_digest_helper(self, tmp_path: Path) -> None:
        cache = tmp_path / "calibration.cache"
        cache.write_bytes(b"TRT-8502-EntropyCalibration2\n")
        assert file_sha256_or_none(cache) == sha256_bytes(b"TRT-8502-EntropyCalibration2\n")
        assert file_sha256_or_none(None) is None
        with pytest.raises(OSError):
            file_sha256_or_none(tmp_path / "absent")


# -- platform ----------------------------------------------------------------------------------


class TestPlatform:
    @pytest.mark.parametrize(
        "text, expected",
        [
            (
                "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                "DATE: Sat Feb 19 17:05:08 UTC 2022\n",
                "32.7.1",
            ),
            ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n", "35.4.1"),
            ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n", "36.3.0"),
            ("something else entirely\n", None),
        ],
    )
    def test_parse_l4t_release(self, text: str, expected: Optional[str]) -> None:
        assert parse_l4t_release(text) == expected

    def test_read_l4t_version(self, tmp_path: Path) -> None:
        release = tmp_path / "nv_tegra_release"
        release.write_text(
            "# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref\n", encoding="utf-8"
        )
        assert read_l4t_version(release) == "35.5.0"
        assert read_l4t_version(tmp_path / "absent") is None

    def test_describe_and_major(self) -> None:
        assert ORIN.describe() == "TensorRT 8.5.2.2 on Orin (SM 8.7), L4T 35.4.1"
        assert PlatformInfo("10.3.0", "RTX", (8, 9)).describe() == "TensorRT 10.3.0 on RTX (SM 8.9)"
        assert ORIN.tensorrt_major == 8
        assert PlatformInfo("10.3.0", "RTX", (8, 9)).tensorrt_major == 10


# -- precision -----------------------------------------------------------------------------------


class TestPrecision:
    @pytest.mark.parametrize(
        "capability, fp16, int8",
        [
            ((5, 3), True, False),
            ((6, 1), False, True),
            ((6, 2), True, False),
            ((7, 2), True, True),
            ((8, 7), True, True),
            ((5, 2), False, False),
        ],
    )
    def test_fast_precisions(self, capability: tuple, fp16: bool, int8: bool) -> None:
        assert fast_precisions(capability) == (fp16, int8)

    # The matrix the appliance builds: (TensorRT, GPU, request, INT8 data) → (precision, which ONNX).
    @pytest.mark.parametrize(
        "platform, requested, data, precision, network, because",
        [
            (
                NANO,
                "auto",
                None,
                "fp16",
                NETWORK_ONNX,
                "SM 5.3 has no fast INT8 (Jetson Nano): building FP16 (builder flag FP16)",
            ),
            (NANO, "auto", "calibration", "fp16", NETWORK_ONNX, "no fast INT8 (Jetson Nano)"),
            (NANO, "fp16", None, "fp16", NETWORK_ONNX, "FP16 as requested"),
            (
                XAVIER,
                "auto",
                "calibration",
                "int8",
                NETWORK_ONNX,
                "SM 7.2 has fast INT8, scales from the calibration data",
            ),
            (XAVIER, "auto", "qdq", "int8", NETWORK_QDQ, "FP16 allowed for the layers without INT8"),
            (
                XAVIER,
                "auto",
                "both",
                "int8",
                NETWORK_QDQ,
                "the Q/DQ INT8 model",
            ),  # the gate-passed model first
            (ORIN, "auto", None, "fp16", NETWORK_ONNX, "there is no INT8 calibration cache or calibrator"),
            (ORIN_10, "int8", "calibration", "int8", NETWORK_ONNX, "implicit quantization"),
            (THOR_10, "auto", "calibration", "int8", NETWORK_ONNX, "SM 11.0 has fast INT8"),
            (
                THOR_11,
                "auto",
                None,
                "fp16",
                NETWORK_FP16,
                "FP16 ONNX made on the device with onnxconverter-common",
            ),
            (
                THOR_11,
                "auto",
                "calibration",
                "fp16",
                NETWORK_FP16,
                "has no implicit INT8 calibration (removed in TensorRT 11",
            ),
            (
                THOR_11,
                "auto",
                "qdq",
                "int8",
                NETWORK_QDQ,
                "layers without Q/DQ stay in the model's FP32 (strongly typed)",
            ),
            (ORIN_11, "fp16", None, "fp16", NETWORK_FP16, "builds strongly typed networks only"),
            (THOR_11, "fp32", "qdq", "fp32", NETWORK_ONNX, "FP32 as requested"),
        ],
    )
    def test_the_plan(
        self,
        platform: PlatformInfo,
        requested: str,
        data: Optional[str],
        precision: str,
        network: str,
        because: str,
    ) -> None:
        plan = plan_precision(
            requested,
            platform,
            qdq=data in ("qdq", "both"),
            calibration=data in ("calibration", "both"),
            fp16_converter="onnxconverter-common 1.16.0",
        )
        assert (plan.precision, plan.network, plan.error) == (precision, network, None), plan.reason
        assert because in plan.reason
        assert plan.strongly_typed is (platform.tensorrt_major >= 11)

    @pytest.mark.parametrize(
        "platform, requested, data, message",
        [
            (NANO, "int8", "calibration", "INT8 requested, but SM 5.3 has no fast INT8 (Jetson Nano)"),
            (ORIN, "int8", None, "INT8 requested, but there is no INT8 calibration cache or calibrator"),
            (
                THOR_11,
                "int8",
                "calibration",
                "INT8 requested, but TensorRT 11.4.0.106 has no implicit INT8 calibration",
            ),
            (
                PlatformInfo("8.5.2.2", "GTX 1080", (6, 1)),
                "fp16",
                None,
                "FP16 requested, but SM 6.1 has no fast FP16",
            ),
        ],
    )
    def test_an_explicit_request_is_met_or_refused(
        self, platform: PlatformInfo, requested: str, data: Optional[str], message: str
    ) -> None:
        plan = plan_precision(requested, platform, calibration=data == "calibration")
        assert plan.precision is None and plan.error is not None and plan.error.startswith(message)
        assert "use precision" in plan.error

    def test_tensorrt_11_without_the_fp16_converter(self) -> None:
        auto = plan_precision("auto", THOR_11)
        assert (auto.precision, auto.network) == ("fp32", NETWORK_ONNX)
        assert "pip install 'face-appliance[jetson]'" in auto.reason
        assert plan_precision("fp16", THOR_11).error is not None

    def test_no_fast_anything_is_fp32(self) -> None:
        plan = plan_precision("auto", PlatformInfo("8.5.2.2", "old", (5, 2)), calibration=True)
        assert plan.precision == "fp32" and "no fast FP16 either" in plan.reason

    def test_features_per_version(self) -> None:
        assert tensorrt_features("8.2.1.8") == TensorRTFeatures(False, True, True, True)
        assert tensorrt_features("10.13.3.9") == TensorRTFeatures(False, True, True, False)
        assert tensorrt_features("11.4.0.106") == TensorRTFeatures(True, False, False, False)

    def test_every_result_is_a_built_precision(self) -> None:
        for requested in ("auto", "int8", "fp16", "fp32"):
            for platform in (NANO, XAVIER, ORIN, ORIN_10, THOR_11):
                for qdq in (False, True):
                    for calibration in (False, True):
                        plan = plan_precision(
                            requested, platform, qdq, calibration, "onnxconverter-common 1.16.0"
                        )
                        assert plan.precision in (*BUILT_PRECISIONS, None)
                        assert (plan.precision is None) is (plan.error is not None)

    def test_unknown_request(self) -> None:
        with pytest.raises(ValueError, match="precision"):
            plan_precision("int4", ORIN)


# -- optimization profiles ---------------------------------------------------------------------


def _fits_spec(tensor: TensorSpec, shape: Sequence[int]) -> bool:
    return len(shape) == len(tensor.shape) and all(d is None or d == s for d, s in zip(tensor.shape, shape))


class TestOptimizationProfile:
    @pytest.mark.parametrize("spec", MODELS, ids=[spec.name for spec in MODELS])
    def test_every_registry_model_has_a_profile_that_fits_its_inputs(self, spec: object) -> None:
        profiles = optimization_profile(spec)  # type: ignore[arg-type]
        assert [p.name for p in profiles] == [t.name for t in spec.inputs]  # type: ignore[attr-defined]
        for tensor, profile in zip(spec.inputs, profiles):  # type: ignore[attr-defined]
            for shape in (profile.min, profile.opt, profile.max):
                assert _fits_spec(tensor, shape), (tensor, shape)

    def test_pnet_covers_the_pyramid_in_transposed_nhwc(self) -> None:
        (profile,) = optimization_profile(get_model("mtcnn-pnet"), max_frame=(1080, 1920), min_face=20)
        # 1920x1080 scaled by 12/20 = 1152x648, fed as (N, W, H, 3).
        assert profile.min == (1, 12, 12, 3)
        assert profile.max == (1, 1152, 648, 3)
        assert profile.opt == profile.max

    def test_pnet_with_a_small_min_face_covers_the_upsampled_frame(self) -> None:
        # The detector maps min_face onto the 12-pixel cell, so below 12 it upsamples the frame.
        spec = get_model("mtcnn-pnet")
        assert optimization_profile(spec, max_frame=(720, 1280), min_face=12)[0].max == (1, 1280, 720, 3)
        assert optimization_profile(spec, max_frame=(720, 1280), min_face=6)[0].max == (1, 2560, 1440, 3)

    def test_pnet_pyramid_levels_fit(self) -> None:
        (profile,) = optimization_profile(get_model("mtcnn-pnet"), max_frame=(480, 640), min_face=20)
        scale, factor = 12 / 20, 0.709
        height, width = 480, 640
        while min(height, width) * scale >= 12:
            level = (1, round(width * scale), round(height * scale), 3)
            assert profile.contains(level), level
            scale *= factor

    @pytest.mark.parametrize(
        "name, opt",
        [
            ("mtcnn-rnet", 16),
            ("mtcnn-onet", 8),
            ("mobilefacenet", 4),
            ("minifasnet-v2", 4),
            ("minifasnet-v1se", 4),
        ],
    )
    def test_batch_ranges(self, name: str, opt: int) -> None:
        spec = get_model(name)
        (profile,) = optimization_profile(spec, max_batch=16)
        fixed = tuple(int(d) for d in spec.inputs[0].shape[1:] if d is not None)
        assert profile.min == (1, *fixed)
        assert profile.opt == (opt, *fixed)
        assert profile.max == (16, *fixed)

    def test_batch_opt_never_exceeds_max(self) -> None:
        for name in ("mtcnn-rnet", "mtcnn-onet", "mobilefacenet", "minifasnet-v2"):
            (profile,) = optimization_profile(get_model(name), max_batch=2)
            assert profile.opt[0] <= 2 and profile.max[0] == 2
        (one,) = optimization_profile(get_model("mtcnn-onet"), max_batch=1)
        assert one.min[0] == one.opt[0] == one.max[0] == 1

    def test_yunet_sides_are_multiples_of_32(self) -> None:
        (profile,) = optimization_profile(get_model("yunet"), yunet_max_side=600)
        assert profile.min == (1, 3, 32, 32)
        assert profile.max == (1, 3, 608, 608)
        assert all(d % 32 == 0 for d in profile.max[2:])
        assert profile.opt == profile.max  # the 640x480 example does not fit under 608

    def test_yunet_opt_is_the_example_shape_when_it_fits(self) -> None:
        (profile,) = optimization_profile(get_model("yunet"), yunet_max_side=640)
        assert profile.opt == (1, 3, 480, 640)
        (small,) = optimization_profile(get_model("yunet"), yunet_max_side=320)
        assert small.opt == small.max == (1, 3, 320, 320)

    def test_unknown_dynamic_model_is_refused(self) -> None:
        odd = replace(
            get_model("mobilefacenet"),
            name="odd",
            family="other",
            stage="embed",
            inputs=(TensorSpec("x", (None, 3, None, None)),),
        )
        with pytest.raises(ValueError, match="no optimization-profile rule"):
            optimization_profile(odd)

    def test_static_inputs_get_a_fixed_range(self) -> None:
        fixed = replace(get_model("mobilefacenet"), inputs=(TensorSpec("input0", (1, 3, 112, 112)),))
        (profile,) = optimization_profile(fixed)
        assert profile.min == profile.opt == profile.max == (1, 3, 112, 112)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"max_batch": 0}, "max_batch"),
            ({"max_frame": (8, 640)}, "max_frame"),
            ({"min_face": 0}, "min_face"),
            ({"yunet_max_side": 16}, "yunet_max_side"),
        ],
    )
    def test_bad_arguments(self, kwargs: Dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            optimization_profile(get_model("mobilefacenet"), **kwargs)  # type: ignore[arg-type]
