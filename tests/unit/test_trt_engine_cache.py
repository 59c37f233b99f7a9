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
    INT8_FROM_CALIBRATION,
    INT8_FROM_QDQ,
    KEY_LENGTH,
    EngineManifest,
    EngineRequest,
    EngineTensor,
    ProfileRange,
    cache_key,
    choose_precision,
    engine_path,
    fast_precisions,
    file_sha256_or_none,
    lookup,
    make_manifest,
    manifest_path,
    optimization_profile,
    prune,
    sha256_bytes,
    store,
    timing_cache_path,
    utc_timestamp,
)
from engines.tensorrt.platform import PlatformInfo, parse_l4t_release, read_l4t_version

ORIN = PlatformInfo("8.5.2.2", "Orin", (8, 7), "35.4.1")
NANO = PlatformInfo("8.2.1.8", "NVIDIA Tegra X1", (5, 3), "32.7.1")
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
            ({"calibration_sha256": sha256_bytes(b"cal")}, "INT8 calibration cache differs"),
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

    def test_orin_auto_with_calibration_is_int8(self) -> None:
        precision, reason = choose_precision("auto", (8, 7), INT8_FROM_CALIBRATION)
        assert precision == "int8" and "calibration cache" in reason

    def test_orin_auto_with_qdq_is_int8(self) -> None:
        precision, reason = choose_precision("auto", (8, 7), INT8_FROM_QDQ)
        assert precision == "int8" and "Q/DQ" in reason

    def test_nano_auto_falls_back_to_fp16(self) -> None:
        precision, reason = choose_precision("auto", (5, 3), INT8_FROM_CALIBRATION)
        assert precision == "fp16"
        assert "SM 5.3 has no fast INT8 (Jetson Nano)" in reason

    def test_nano_int8_request_falls_back_with_reason(self) -> None:
        precision, reason = choose_precision("int8", (5, 3), INT8_FROM_CALIBRATION)
        assert precision == "fp16" and reason.startswith("INT8 requested, but")

    def test_auto_without_int8_data_is_fp16(self) -> None:
        precision, reason = choose_precision("auto", (8, 7), None)
        assert precision == "fp16" and "no INT8 calibration cache" in reason

    def test_int8_without_data_falls_back(self) -> None:
        precision, reason = choose_precision("int8", (7, 2), None)
        assert precision == "fp16" and "INT8 requested, but" in reason

    def test_fp32_is_honoured(self) -> None:
        assert choose_precision("fp32", (8, 7), INT8_FROM_CALIBRATION)[0] == "fp32"

    def test_fp16_without_fast_fp16_is_fp32(self) -> None:
        precision, reason = choose_precision("fp16", (6, 1), None)
        assert precision == "fp32" and "no fast FP16" in reason

    def test_no_fast_anything_is_fp32(self) -> None:
        precision, reason = choose_precision("auto", (5, 2), INT8_FROM_CALIBRATION)
        assert precision == "fp32" and "no fast FP16" in reason

    def test_reported_capabilities_override_the_table(self) -> None:
        # TensorRT < 10 reports platform_has_fast_int8/fp16; those win over the compute capability.
        assert (
            choose_precision("auto", (8, 7), INT8_FROM_CALIBRATION, fast_fp16=True, fast_int8=False)[0]
            == "fp16"
        )
        assert (
            choose_precision("auto", (5, 3), INT8_FROM_CALIBRATION, fast_fp16=True, fast_int8=True)[0]
            == "int8"
        )

    def test_every_result_is_a_built_precision(self) -> None:
        for requested in ("auto", "int8", "fp16", "fp32"):
            for capability in ((5, 3), (6, 1), (7, 2), (8, 7)):
                for source in (None, INT8_FROM_CALIBRATION):
                    assert choose_precision(requested, capability, source)[0] in BUILT_PRECISIONS

    def test_unknown_request(self) -> None:
        with pytest.raises(ValueError, match="precision"):
            choose_precision("int4", (8, 7), None)


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
