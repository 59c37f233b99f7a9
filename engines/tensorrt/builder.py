"""Build TensorRT engines from the registry's ONNX models, on the device that will run them.

:class:`EngineBuilder` carries out the request's :class:`~engines.tensorrt.cache.PrecisionPlan`: it
parses the ONNX the plan names (the registry's FP32 model, an FP16 model converted on the device by
:mod:`engines.tensorrt.fp16`, or the Q/DQ INT8 model of ``face-appliance calibrate``) with TensorRT's
ONNX parser, sets the precision the TensorRT version allows, adds the optimization profile of
:func:`engines.tensorrt.cache.optimization_profile`, builds with ``Builder.build_serialized_network``
and writes the engine and its manifest (which ONNX, its sha256, the precision and why) into the cache.

Per TensorRT version (each checked against that version's Python bindings, docs/tensorrt-review.md):

* **8.2** (Jetson Nano, JetPack 4.6): explicit batch through
  ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; the workspace through ``max_workspace_size``
  (``set_memory_pool_limit`` came in 8.4); ``Builder.platform_has_fast_fp16/int8`` decide; FP16 by
  ``BuilderFlag.FP16`` (the Nano has no INT8).
* **8.5, 8.6** (JetPack 5/6): ``set_memory_pool_limit``; FP16/INT8 builder flags; INT8 from an
  ``IInt8EntropyCalibrator2`` (or its cache) or from Q/DQ layers.
* **10.x** (JetPack 6/7.0): every network is explicit-batch (``EXPLICIT_BATCH`` deprecated, not
  passed); ``platform_has_fast_*`` deprecated (10.5), so the compute capability decides; the
  calibrator API is deprecated (10.1) but present and used; ``IProgressMonitor`` reports and cancels.
* **11.x** (JetPack 7.2): strongly typed networks only (``STRONGLY_TYPED`` is deprecated there and
  ignored, always on; it is not passed). There are no precision flags, no ``int8_calibrator``, no
  ``IInt8EntropyCalibrator2``: FP16 comes from the FP16 ONNX, INT8 from the Q/DQ ONNX; calibration
  data is refused with what to do instead.

Also: a DLA core on request (Xavier/Orin), with GPU fallback; a timing cache per TensorRT version and
GPU in the engine directory; progress per phase. TensorRT's log goes to the Python logger
``"tensorrt"`` through :class:`TrtLogBridge`; every TensorRT failure becomes an
:class:`engines.errors.EngineBuildError` saying what TensorRT said and what to do.

This module imports ``tensorrt`` at import time; it is imported only where engines are built or run.
``pycuda`` is imported lazily to make the device's primary context current.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorrt as trt

from ..errors import EngineBuildError
from ..files import PathLike, atomic_writer
from ..registry import ModelSpec
from . import fp16
from .cache import (
    INT8_FROM_CALIBRATION,
    INT8_FROM_QDQ,
    NETWORK_FP16,
    NETWORK_ONNX,
    NETWORK_QDQ,
    EngineManifest,
    EngineRequest,
    EngineTensor,
    PrecisionPlan,
    ProfileRange,
    fast_precisions,
    make_manifest,
    no_implicit_int8,
    sha256_bytes,
    store,
    tensorrt_features,
    timing_cache_path,
)
from .platform import PlatformInfo, probe_platform

logger = logging.getLogger(__name__)

#: TensorRT's own messages are logged here (INFO mapped to DEBUG, VERBOSE to :data:`VERBOSE`).
TRT_LOG = logging.getLogger("tensorrt")
#: A level below DEBUG for TensorRT's VERBOSE chatter.
VERBOSE = 5

TRT_VERSION: str = str(trt.__version__)
TRT_MAJOR: int = int(TRT_VERSION.split(".", 1)[0]) if TRT_VERSION.split(".", 1)[0].isdigit() else 0
#: What the running TensorRT offers (strongly typed only, precision flags, implicit INT8).
FEATURES = tensorrt_features(TRT_VERSION)

#: ``progress(phase, done, total)``: ``done`` of ``total`` steps of ``phase`` are complete.
ProgressCallback = Callable[[str, int, int], None]

_SEVERITY_LEVELS: Dict[Any, int] = {
    trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
    trt.ILogger.Severity.ERROR: logging.ERROR,
    trt.ILogger.Severity.WARNING: logging.WARNING,
    trt.ILogger.Severity.INFO: logging.DEBUG,
    trt.ILogger.Severity.VERBOSE: VERBOSE,
}
_ERROR_SEVERITIES = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)


class TrtLogBridge(trt.ILogger):
    """A ``trt.ILogger`` that forwards TensorRT's messages to the Python logger ``"tensorrt"``.

    Error messages are also collected by :meth:`capture_errors` (per thread), so a failed parse,
    build or deserialization can say what TensorRT complained about. TensorRT requires the logger to
    outlive every object created with it, so one process-wide instance is used (:func:`get_trt_logger`).
    """

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self._local = threading.local()

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:  # called by TensorRT
        """Forward one TensorRT message (called from TensorRT, possibly from its worker threads).

        ``ILogger::log`` is ``noexcept`` in C++: an exception escaping the Python override cannot be
        handled there, so none is let out.
        """
        try:
            level = _SEVERITY_LEVELS.get(severity, logging.WARNING)
            if severity in _ERROR_SEVERITIES:
                captured: Optional[List[str]] = getattr(self._local, "errors", None)
                if captured is not None:
                    captured.append(str(msg))
            if TRT_LOG.isEnabledFor(level):
                TRT_LOG.log(level, "%s", msg)
        except Exception:  # a broken log handler must not take TensorRT down
            logger.debug("forwarding a TensorRT log message failed", exc_info=True)

    @contextlib.contextmanager
    def capture_errors(self) -> Iterator[List[str]]:
        """Collect the ERROR and INTERNAL_ERROR messages TensorRT logs on this thread meanwhile."""
        previous = getattr(self._local, "errors", None)
        errors: List[str] = []
        self._local.errors = errors
        try:
            yield errors
        finally:
            self._local.errors = previous


_LOGGER_LOCK = threading.Lock()
_LOGGER: Optional[TrtLogBridge] = None


def get_trt_logger() -> TrtLogBridge:
    """The process-wide TensorRT logger bridge (created, and TensorRT's plugins registered, once)."""
    global _LOGGER  # noqa: PLW0603 - one logger for the process, as TensorRT requires
    with _LOGGER_LOCK:
        if _LOGGER is None:
            bridge = TrtLogBridge()
            # Registers TensorRT's bundled plugins, which some ONNX operators map to.
            trt.init_libnvinfer_plugins(bridge, "")
            _LOGGER = bridge
        return _LOGGER


def errors_text(errors: Sequence[str]) -> str:
    """`` TensorRT said: a | b`` for an exception message, or ``""`` when it said nothing."""
    return f" TensorRT said: {' | '.join(errors[-5:])}" if errors else ""


@contextlib.contextmanager
def cuda_device_context(device: int) -> Iterator[None]:
    """Make CUDA device ``device``'s primary context current on this thread for the block.

    Raises:
        EngineBuildError: pycuda is missing or the context cannot be made current.
    """
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise EngineBuildError(f"pycuda is needed to select CUDA device {device}: {err}") from err
    try:
        cuda.init()
        context = cuda.Device(device).retain_primary_context()
        context.push()
    except cuda.Error as err:
        raise EngineBuildError(f"cannot make CUDA device {device} current: {err}") from err
    try:
        yield
    finally:
        try:
            cuda.Context.pop()
        finally:
            context.detach()


@dataclass(frozen=True)
class BuiltEngine:
    """The result of :meth:`EngineBuilder.build`.

    ``engine`` is the serialized engine; ``path`` where it was cached, ``None`` when no engine
    directory was given.
    """

    engine: bytes
    manifest: EngineManifest
    path: Optional[Path]


@dataclass(frozen=True)
class _Result:
    """What :meth:`EngineBuilder._build` made."""

    engine: bytes
    tensors: List[EngineTensor]
    precision: str
    reason: str
    target: str
    network: str
    network_sha256: str


#: Implicit INT8 calibration: ``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator``
#: (deprecated from TensorRT 10.1, removed in 11.0).
_HAS_CALIBRATORS = hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.IBuilderConfig, "int8_calibrator")

if _HAS_CALIBRATORS:

    class _CacheOnlyCalibrator(trt.IInt8EntropyCalibrator2):
        """An INT8 calibrator that only replays a calibration cache (no images, no device memory).

        This is how an engine is built on the device from the calibration cache shipped in a model
        package: TensorRT reads the scales from ``read_calibration_cache`` and never asks for a batch.
        """

        def __init__(self, cache: bytes) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._cache = cache

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            del names  # no calibration batches: the cache holds the scales
            return None

        def read_calibration_cache(self) -> bytes:
            return self._cache

        def write_calibration_cache(self, cache: bytes) -> None:
            del cache  # the cache came from the model package and is not rewritten


if hasattr(trt, "IProgressMonitor"):

    class _ProgressMonitor(trt.IProgressMonitor):  # TensorRT 10+
        """Forwards TensorRT's build phases to a :data:`ProgressCallback`; cancels when asked."""

        def __init__(self, report: Optional[ProgressCallback], cancel: Optional[threading.Event]) -> None:
            trt.IProgressMonitor.__init__(self)
            self._report = report
            self._cancel = cancel
            self._totals: Dict[str, int] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            with self._lock:
                self._totals[phase_name] = int(num_steps)
            logger.debug("build phase %r started (%d steps, parent %r)", phase_name, num_steps, parent_phase)
            _safe_report(self._report, phase_name, 0, int(num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._totals.get(phase_name, 0)
            _safe_report(self._report, phase_name, int(step) + 1, total)
            # Returning False asks TensorRT to cancel the build.
            return not (self._cancel is not None and self._cancel.is_set())

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                total = self._totals.pop(phase_name, 0)
            _safe_report(self._report, phase_name, total, total)


def _safe_report(report: Optional[ProgressCallback], phase: str, done: int, total: int) -> None:
    """Call the progress callback; its failures are logged, never passed back into TensorRT."""
    if report is None:
        return
    try:
        report(phase, done, total)
    except Exception:  # a progress bar must not break a build, nor raise into TensorRT's C++ caller
        logger.exception("the build progress callback failed for phase %r", phase)


class EngineBuilder:
    """Builds TensorRT engines for registry models on one CUDA device.

    Args:
        device: CUDA device index.
        workspace_mb: builder workspace limit in MiB.
        platform: the running platform; probed with :func:`probe_platform` when ``None``.
        progress: called as ``progress(phase, done, total)`` during a build.
        cancel: set it (from another thread) to cancel a running build; honoured between phases, and
            within TensorRT's own phases on TensorRT 10+.
        manage_context: make the device's primary CUDA context current around each build. Pass
            ``False`` when the caller already holds a current context on this thread (the TensorRT
            back-end does).
        timing_cache: load and save the timing cache in the engine directory.

    Raises:
        EngineBuildError: ``platform`` is ``None`` and the device cannot be probed.
    """

    def __init__(
        self,
        device: int = 0,
        workspace_mb: int = 256,
        platform: Optional[PlatformInfo] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
        manage_context: bool = True,
        timing_cache: bool = True,
    ) -> None:
        if workspace_mb < 1:
            raise EngineBuildError(f"workspace_mb must be >= 1, got {workspace_mb}")
        self.device = device
        self.workspace_mb = workspace_mb
        self.platform = platform if platform is not None else probe_platform(device)
        self.progress = progress
        self.cancel = cancel
        self.manage_context = manage_context
        self.use_timing_cache = timing_cache
        try:
            self._trt_logger = get_trt_logger()
        except (RuntimeError, TypeError) as err:  # init_libnvinfer_plugins failed
            raise EngineBuildError(
                f"TensorRT {TRT_VERSION} cannot load its plugins: {err}; check the installation "
                "(face-appliance doctor)"
            ) from err

    # -- public --------------------------------------------------------------------------------

    def build(
        self,
        spec: ModelSpec,
        onnx: bytes,
        request: EngineRequest,
        engine_dir: Optional[PathLike] = None,
        calibrator: Optional[trt.IInt8Calibrator] = None,
        calibration_cache: Optional[bytes] = None,
    ) -> BuiltEngine:
        """Build the engine ``request`` describes from ``onnx`` and cache it in ``engine_dir``.

        Args:
            spec: the registry entry (names the model; its inputs must match the network's).
            onnx: the prepared ONNX bytes (:func:`engines.prepare.load_model_bytes`); their sha256
                must be ``request.onnx_sha256``.
            request: the cache request (precision, DLA core, profiles, INT8 data); its
                :attr:`~engines.tensorrt.cache.EngineRequest.plan` says which ONNX is parsed (the
                Q/DQ model is read from ``request.int8_onnx_path`` and checked against its sha256;
                the FP16 model is converted from ``onnx``) and at which precision.
            engine_dir: the engine cache; ``None`` builds without caching (and without timing cache).
            calibrator: an ``IInt8Calibrator`` (e.g. :class:`engines.tensorrt.calibrator.EntropyCalibrator`)
                whose batches have the calibration profile's shape: its ``batch_shapes`` when it has
                them, else batch ``calibrator.get_batch_size()`` by the profile's opt dimensions.
                ``request.calibration_sha256`` must identify its calibration data. A failure it kept
                in an ``error`` attribute (its callbacks cannot raise into TensorRT) fails the build.
                Ignored (with a log line) when the plan does not calibrate.
            calibration_cache: the bytes of an INT8 calibration cache, used when ``calibrator`` is
                ``None``; their sha256 must be ``request.calibration_sha256``. Ignored (logged) when
                the plan does not calibrate.

        Returns:
            The engine bytes, its manifest, and its path in the cache (``None`` without a cache).

        Raises:
            EngineBuildError: the request cannot be met on this TensorRT and GPU (an explicit INT8 or
                FP16 request; the message says why and what to do), the inputs disagree, the ONNX
                parser fails (every error listed), the build fails or is cancelled, or the cache
                cannot be written.
        """
        calibrator, calibration_cache = self._check_inputs(spec, onnx, request, calibrator, calibration_cache)
        context = cuda_device_context(self.device) if self.manage_context else contextlib.nullcontext()
        started = time.monotonic()
        with context, self._trt_logger.capture_errors() as errors:
            try:
                result = self._build(spec, onnx, request, engine_dir, calibrator, calibration_cache, errors)
            except (RuntimeError, TypeError, ValueError) as err:  # raised by TensorRT's bindings
                raise EngineBuildError(
                    f"{spec.name}: TensorRT {TRT_VERSION} failed while building: {err}{errors_text(errors)}"
                ) from err
            except AttributeError as err:  # an API this TensorRT lacks: a bug here, not the user's
                raise EngineBuildError(
                    f"{spec.name}: TensorRT {TRT_VERSION} lacks an API the engine builder uses ({err}); "
                    "report it with the output of `face-appliance doctor`"
                ) from err
        seconds = time.monotonic() - started
        engine = result.engine
        manifest = make_manifest(
            request,
            engine,
            result.tensors,
            result.precision,
            result.reason,
            result.target,
            seconds,
            network=result.network,
            network_sha256=result.network_sha256,
        )
        logger.info(
            "built %s engine for %s from %s in %.1f s (%s, %d bytes): %s",
            result.precision.upper(),
            spec.name,
            result.network,
            seconds,
            result.target,
            len(engine),
            result.reason,
        )
        path: Optional[Path] = None
        if engine_dir is not None:
            self._report("save", 0, 1)
            try:
                path = store(engine_dir, manifest, engine)
            except OSError as err:
                raise EngineBuildError(
                    f"{spec.name}: the engine was built but cannot be cached in {engine_dir}: {err}"
                ) from err
            self._report("save", 1, 1)
        return BuiltEngine(engine, manifest, path)

    # -- the build -----------------------------------------------------------------------------

    def _build(
        self,
        spec: ModelSpec,
        onnx: bytes,
        request: EngineRequest,
        engine_dir: Optional[PathLike],
        calibrator: Optional[trt.IInt8Calibrator],
        calibration_cache: Optional[bytes],
        errors: List[str],
    ) -> _Result:
        self._check_cancel(spec)
        plan = request.plan
        if plan.precision is None:
            raise EngineBuildError(f"{spec.name}: {plan.error}")
        builder = self._new(spec, "the builder", lambda: trt.Builder(self._trt_logger), errors)
        plan = self._check_reported_precisions(spec, builder, request, plan)
        precision, reason = str(plan.precision), plan.reason
        network_bytes, network_sha256 = self._network_bytes(spec, onnx, request, plan)

        self._report("parse", 0, 1)
        network = self._new(spec, "the network", lambda: builder.create_network(_network_flags()), errors)
        parser = self._new(spec, "the ONNX parser", lambda: trt.OnnxParser(network, self._trt_logger), errors)
        if not parser.parse(network_bytes):
            problems = [str(parser.get_error(index)) for index in range(parser.num_errors)]
            for problem in problems:
                logger.error("%s: ONNX parser: %s", spec.name, problem)
            raise EngineBuildError(
                f"{spec.name}: TensorRT's ONNX parser rejected the {plan.network} model "
                f"({len(problems)} error(s)): "
                + " | ".join(problems or ["no error reported"])
                + errors_text(errors)
            )
        self._report("parse", 1, 1)
        tensors = _describe_network(spec, network)
        qdq = _has_qdq_layers(network)
        if plan.int8_source == INT8_FROM_QDQ and not qdq:
            raise EngineBuildError(
                f"{spec.name}: the Q/DQ INT8 model {request.int8_onnx_path or ''} has no Quantize/Dequantize "
                "layers TensorRT recognises; make it again with `face-appliance calibrate`"
            )
        if qdq and plan.int8_source != INT8_FROM_QDQ:
            logger.warning(
                "%s: the %s model has Q/DQ layers but is built %s; TensorRT may refuse it",
                spec.name,
                plan.network,
                precision.upper(),
            )

        config = self._new(spec, "the builder config", builder.create_builder_config, errors)
        _set_workspace(config, self.workspace_mb << 20)
        int8_calibrator = None
        if plan.int8_source == INT8_FROM_CALIBRATION:
            int8_calibrator = (
                calibrator if calibrator is not None else _CacheOnlyCalibrator(calibration_cache)
            )
        self._set_precision(config, request, plan, int8_calibrator)
        logger.info("%s: %s", spec.name, reason)

        profile = self._add_profile(spec, builder, network, config, request.profiles)
        if int8_calibrator is not None and profile is not None:
            self._add_calibration_profile(spec, builder, config, request.profiles, int8_calibrator)

        target, device_note = self._place(spec, builder, config, request.dla_core, precision)
        if device_note:
            reason = f"{reason}; {device_note}"

        timing_file = None
        if engine_dir is not None and self.use_timing_cache:
            timing_file = timing_cache_path(engine_dir, self.platform)
            _load_timing_cache(config, timing_file)

        monitor = None
        if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
            monitor = _ProgressMonitor(self.progress, self.cancel)
            config.progress_monitor = monitor  # kept alive by `monitor` until the build returns
        self._check_cancel(spec)
        self._report("build", 0, 1)
        logger.info(
            "building %s engine for %s from the %s model on %s (this can take minutes on a Jetson)",
            precision.upper(),
            spec.name,
            plan.network,
            self.platform.describe(),
        )
        try:
            serialized = builder.build_serialized_network(network, config)
        except (RuntimeError, TypeError, ValueError) as err:
            raise EngineBuildError(
                f"{spec.name}: the TensorRT build failed: {err}{errors_text(errors)}"
            ) from err
        failure = getattr(int8_calibrator, "error", None)
        if failure is not None:  # kept by a calibrator whose callback failed (it cannot raise into TensorRT)
            raise EngineBuildError(f"{spec.name}: INT8 calibration failed: {failure}{errors_text(errors)}")
        if serialized is None:
            if self.cancel is not None and self.cancel.is_set():
                raise EngineBuildError(f"{spec.name}: the engine build was cancelled")
            raise EngineBuildError(
                f"{spec.name}: TensorRT could not build the engine "
                f"(build_serialized_network returned nothing).{errors_text(errors)}"
            )
        self._report("build", 1, 1)
        engine = bytes(serialized)  # IHostMemory exposes the buffer protocol
        if timing_file is not None:
            _save_timing_cache(config, timing_file)
        return _Result(engine, tensors, precision, reason, target, plan.network, network_sha256)

    def _new(self, spec: ModelSpec, what: str, make: Callable[[], Any], errors: List[str]) -> Any:
        """``make()``, or :class:`EngineBuildError` when TensorRT raises or returns nothing (out of memory,
        no CUDA context, a broken install) — never a raw TensorRT exception."""
        try:
            made = make()
        except (RuntimeError, TypeError, ValueError) as err:
            raise EngineBuildError(
                f"{spec.name}: TensorRT cannot create {what}: {err}{errors_text(errors)}; check that the "
                "CUDA device works (face-appliance doctor)"
            ) from err
        if made is None:
            raise EngineBuildError(
                f"{spec.name}: TensorRT cannot create {what}.{errors_text(errors)} Check that the CUDA "
                "device works (face-appliance doctor)"
            )
        return made

    def _check_reported_precisions(
        self, spec: ModelSpec, builder: trt.Builder, request: EngineRequest, plan: PrecisionPlan
    ) -> PrecisionPlan:
        """Before TensorRT 10, ``Builder.platform_has_fast_fp16/int8`` are the authority on the GPU: when
        they deny what the compute-capability table granted, ``auto`` falls back (re-planned without
        the INT8 data) and an explicit request fails."""
        if not FEATURES.reports_fast_precisions:
            return plan
        has_fp16 = bool(builder.platform_has_fast_fp16)
        has_int8 = bool(builder.platform_has_fast_int8)
        denied = None
        if plan.precision == "int8" and not has_int8:
            denied = "INT8"
        elif plan.precision == "fp16" and not has_fp16:
            denied = "FP16"
        if denied is None:
            return plan
        why = f"TensorRT {TRT_VERSION} reports no fast {denied} on {self.platform.gpu_name} ({self.platform.sm})"
        if request.precision != "auto":
            raise EngineBuildError(f"{spec.name}: {request.precision.upper()} requested, but {why}")
        fallback = "fp16" if has_fp16 and denied == "INT8" else "fp32"
        logger.warning("%s: %s; building %s", spec.name, why, fallback.upper())
        return PrecisionPlan(fallback, NETWORK_ONNX, None, f"auto: {why}: building {fallback.upper()}")

    def _network_bytes(
        self, spec: ModelSpec, onnx: bytes, request: EngineRequest, plan: PrecisionPlan
    ) -> Tuple[bytes, str]:
        """The ONNX bytes the plan builds from, and their sha256."""
        if plan.network == NETWORK_FP16:
            installed = fp16.converter_version()
            if installed != request.fp16_converter:
                raise EngineBuildError(
                    f"{spec.name}: the request was made for {request.fp16_converter}, "
                    f"{installed or 'no converter'} is installed; derive the request again"
                )
            converted = fp16.convert(onnx, spec.name)
            return converted, sha256_bytes(converted)
        if plan.network == NETWORK_QDQ:
            where = request.int8_onnx_path
            if where is None:
                raise EngineBuildError(f"{spec.name}: the request names a Q/DQ INT8 model but not its file")
            try:
                data = Path(where).read_bytes()
            except OSError as err:
                raise EngineBuildError(
                    f"{spec.name}: cannot read the Q/DQ INT8 model {where}: {err.strerror or err}"
                ) from err
            digest = sha256_bytes(data)
            if digest != request.int8_onnx_sha256:
                raise EngineBuildError(
                    f"{spec.name}: the Q/DQ INT8 model {where} changed since the request was made "
                    f"(sha256 {digest[:12]}…, expected {str(request.int8_onnx_sha256)[:12]}…); derive the "
                    "request again"
                )
            return data, digest
        return onnx, request.onnx_sha256

    def _set_precision(
        self,
        config: trt.IBuilderConfig,
        request: EngineRequest,
        plan: PrecisionPlan,
        int8_calibrator: Optional[trt.IInt8Calibrator],
    ) -> None:
        """Set the builder flags the plan needs (weakly typed TensorRT only) and the calibrator."""
        if plan.precision == "fp32" and request.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            # TF32 is on by default for FP32 layers on Ampere and later (Orin); an explicit FP32
            # request is the accuracy reference, so it gets IEEE FP32.
            config.clear_flag(trt.BuilderFlag.TF32)
        if plan.strongly_typed or not FEATURES.precision_flags:
            return  # the ONNX's tensor types decide (the FP16 or Q/DQ model)
        has_fp16 = fast_precisions(self.platform.compute_capability)[0]
        if plan.precision == "fp16" or (plan.precision == "int8" and has_fp16):
            # With INT8, FP16 lets the layers without INT8 kernels avoid FP32.
            config.set_flag(trt.BuilderFlag.FP16)
        if plan.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if int8_calibrator is not None:
                config.int8_calibrator = int8_calibrator

    def _add_profile(
        self,
        spec: ModelSpec,
        builder: trt.Builder,
        network: trt.INetworkDefinition,
        config: trt.IBuilderConfig,
        ranges: Sequence[ProfileRange],
    ) -> Optional[trt.IOptimizationProfile]:
        """Add one optimization profile covering ``ranges``; ``None`` when no input is dynamic."""
        by_name = {item.name: item for item in ranges}
        inputs = [network.get_input(index) for index in range(network.num_inputs)]
        unknown = sorted(set(by_name) - {tensor.name for tensor in inputs})
        if unknown:
            raise EngineBuildError(f"{spec.name}: profile ranges name inputs the network lacks: {unknown}")
        profile = builder.create_optimization_profile()
        dynamic = False
        for tensor in inputs:
            shape = tuple(int(dim) for dim in tensor.shape)
            wanted = by_name.get(tensor.name)
            if wanted is None:
                if any(dim < 0 for dim in shape):
                    raise EngineBuildError(
                        f"{spec.name}: input {tensor.name!r} has dynamic shape {shape} and no profile range"
                    )
                continue
            fits = len(shape) == len(wanted.min) and all(
                dim < 0 or lo == dim == hi for dim, lo, hi in zip(shape, wanted.min, wanted.max)
            )
            if not fits:
                raise EngineBuildError(
                    f"{spec.name}: profile {wanted.describe()} does not fit the network input shape {shape}"
                )
            if all(dim >= 0 for dim in shape):
                continue
            dynamic = True
            profile.set_shape(tensor.name, wanted.min, wanted.opt, wanted.max)
            logger.debug("%s: optimization profile %s", spec.name, wanted.describe())
        if not dynamic:
            return None
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"{spec.name}: TensorRT refused the optimization profile")
        return profile

    def _add_calibration_profile(
        self,
        spec: ModelSpec,
        builder: trt.Builder,
        config: trt.IBuilderConfig,
        ranges: Sequence[ProfileRange],
        calibrator: Optional[trt.IInt8Calibrator],
    ) -> None:
        """Give implicit INT8 calibration of a dynamic-shape network the one shape it calibrates at.

        TensorRT calibrates a network with runtime dimensions at the calibration profile's shape (its
        MIN and MAX are overwritten by OPT), so the batches the calibrator hands over must have that
        shape. A calibrator with a ``batch_shapes`` mapping (input name → full batch shape, e.g.
        :class:`engines.tensorrt.calibrator.EntropyCalibrator`) says what it feeds; otherwise the
        shape is ``get_batch_size()`` (clipped to the profile) by the profile's opt dimensions.
        """
        if calibrator is None or not hasattr(config, "set_calibration_profile"):
            return
        declared: Mapping[str, Sequence[int]] = getattr(calibrator, "batch_shapes", None) or {}
        batch = int(calibrator.get_batch_size())
        profile = builder.create_optimization_profile()
        for item in ranges:
            wanted = declared.get(item.name)
            if wanted is not None:
                shape = tuple(int(dim) for dim in wanted)
                if len(shape) != len(item.min):
                    raise EngineBuildError(
                        f"{spec.name}: the calibration batches of {item.name!r} have shape {shape}, "
                        f"the network input has rank {len(item.min)}"
                    )
            else:
                shape = (min(max(batch, item.min[0]), item.max[0]), *item.opt[1:])
            logger.debug("%s: calibration profile %s %s", spec.name, item.name, shape)
            profile.set_shape(item.name, shape, shape, shape)
        if not config.set_calibration_profile(profile):
            raise EngineBuildError(f"{spec.name}: TensorRT refused the calibration profile")

    def _place(
        self,
        spec: ModelSpec,
        builder: trt.Builder,
        config: trt.IBuilderConfig,
        dla_core: Optional[int],
        precision: str,
    ) -> Tuple[str, str]:
        """Target the DLA core when asked and possible; return ``(target, note about a fallback)``."""
        if dla_core is None:
            return "gpu", ""
        if precision == "fp32":
            note = f"DLA core {dla_core} not used: the DLA runs only FP16 and INT8, the engine is FP32"
            logger.warning("%s: %s", spec.name, note)
            return "gpu", note
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if dla_core >= cores:
            note = f"DLA core {dla_core} not used: this device has {cores} DLA core(s); building for the GPU"
            logger.warning("%s: %s", spec.name, note)
            return "gpu", note
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        logger.info("%s: targeting DLA core %d with GPU fallback", spec.name, dla_core)
        return f"dla:{dla_core}", ""

    # -- helpers -------------------------------------------------------------------------------

    def _check_inputs(
        self,
        spec: ModelSpec,
        onnx: bytes,
        request: EngineRequest,
        calibrator: Optional[trt.IInt8Calibrator],
        calibration_cache: Optional[bytes],
    ) -> Tuple[Optional[trt.IInt8Calibrator], Optional[bytes]]:
        """Check the inputs against the request; return the calibrator and cache the plan uses."""
        if request.model != spec.name:
            raise EngineBuildError(f"the request is for {request.model!r}, the spec for {spec.name!r}")
        if request.platform != self.platform:
            raise EngineBuildError(
                f"{spec.name}: the request is for {request.platform.describe()}, "
                f"this builder runs {self.platform.describe()}"
            )
        if request.platform.tensorrt_version != TRT_VERSION:
            raise EngineBuildError(
                f"{spec.name}: the request is for TensorRT {request.platform.tensorrt_version}, "
                f"TensorRT {TRT_VERSION} is imported"
            )
        if sha256_bytes(onnx) != request.onnx_sha256:
            raise EngineBuildError(f"{spec.name}: the ONNX bytes do not have the request's sha256")
        if calibrator is not None and calibration_cache is not None:
            raise EngineBuildError(f"{spec.name}: pass a calibrator or a calibration cache, not both")
        if request.plan.int8_source != INT8_FROM_CALIBRATION:
            if calibrator is not None or calibration_cache is not None:
                logger.info("%s: the INT8 calibration data is not used: %s", spec.name, request.plan.reason)
            return None, None
        if not _HAS_CALIBRATORS:
            raise EngineBuildError(f"{spec.name}: {no_implicit_int8(f'TensorRT {TRT_VERSION}')}")
        if calibration_cache is not None and sha256_bytes(calibration_cache) != request.calibration_sha256:
            raise EngineBuildError(
                f"{spec.name}: the calibration cache does not have the request's calibration_sha256"
            )
        if calibrator is None and calibration_cache is None:
            raise EngineBuildError(
                f"{spec.name}: the request names calibration data {str(request.calibration_sha256)[:12]}… "
                "but neither a calibrator nor a calibration cache was given"
            )
        return calibrator, calibration_cache

    def _check_cancel(self, spec: ModelSpec) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise EngineBuildError(f"{spec.name}: the engine build was cancelled")

    def _report(self, phase: str, done: int, total: int) -> None:
        _safe_report(self.progress, phase, done, total)


def _network_flags() -> int:
    """The ``create_network`` flags.

    Explicit batch must be asked for before TensorRT 10 (``EXPLICIT_BATCH``). From 10 every network is
    explicit-batch and the flag is deprecated ("Ignored"); 11 removed it. TensorRT 11 builds strongly
    typed networks only: its ``STRONGLY_TYPED`` flag is "deprecated ... always enabled ... ignored",
    so nothing is passed there either. On 10.x the networks stay weakly typed (builder flags and the
    calibrator need that).
    """
    if TRT_MAJOR < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _set_workspace(config: trt.IBuilderConfig, limit: int) -> None:
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, limit)
    else:
        config.max_workspace_size = limit


def _has_qdq_layers(network: trt.INetworkDefinition) -> bool:
    """Whether the parsed network is explicitly quantized (has Quantize/Dequantize layers)."""
    kinds = {
        getattr(trt.LayerType, name) for name in ("QUANTIZE", "DEQUANTIZE") if hasattr(trt.LayerType, name)
    }
    return any(network.get_layer(index).type in kinds for index in range(network.num_layers))


def _describe_network(spec: ModelSpec, network: trt.INetworkDefinition) -> List[EngineTensor]:
    """Log the network's inputs and outputs and return them as :class:`EngineTensor` records."""
    tensors: List[EngineTensor] = []
    for mode, count, getter in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for index in range(count):
            tensor = getter(index)
            shape = tuple(int(dim) for dim in tensor.shape)
            dtype = numpy_dtype_name(tensor.dtype)
            logger.info("%s: network %s %r shape %s %s", spec.name, mode, tensor.name, shape, dtype)
            tensors.append(EngineTensor(str(tensor.name), mode, shape, dtype))
    return tensors


# TensorRT data type -> numpy. Not ``trt.nptype``: in TensorRT 8.5 it maps BOOL to ``np.bool``, which
# NumPy 1.24 removed, so *every* call raises AttributeError there (NVIDIA/TensorRT#2557, fixed in 8.6);
# JetPack 5 pairs TensorRT 8.5 with Python 3.8, where NumPy 1.24 installs. Members a release lacks
# (UINT8 before 8.5, INT64 before 10) are skipped.
_NUMPY_TYPES: Dict[Any, np.dtype] = {
    getattr(trt.DataType, name): np.dtype(numpy_type)
    for name, numpy_type in (
        ("FLOAT", np.float32),
        ("HALF", np.float16),
        ("INT8", np.int8),
        ("INT32", np.int32),
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("INT64", np.int64),
    )
    if hasattr(trt.DataType, name)
}


def numpy_dtype(dtype: trt.DataType) -> np.dtype:
    """The numpy dtype of a TensorRT data type.

    Raises:
        TypeError: the type has no numpy equivalent (BF16, FP8, INT4).
    """
    try:
        return _NUMPY_TYPES[dtype]
    except KeyError:
        raise TypeError(f"TensorRT data type {dtype} has no numpy equivalent") from None


def numpy_dtype_name(dtype: trt.DataType) -> str:
    """The numpy name of a TensorRT data type (``"float32"``), or TensorRT's own name without one."""
    try:
        return numpy_dtype(dtype).name
    except TypeError:  # BF16, FP8, INT4 have no numpy type
        return str(dtype).rsplit(".", 1)[-1].lower()


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Start the build from the saved timing cache, or from an empty one when it is absent or refused."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        blob = b""
    except OSError as err:
        logger.warning("cannot read the timing cache %s (%s); starting an empty one", path, err.strerror)
        blob = b""
    try:
        cache = config.create_timing_cache(blob)
    except (RuntimeError, TypeError, ValueError) as err:
        logger.warning("TensorRT cannot read the timing cache %s (%s); starting an empty one", path, err)
        cache = None
    if cache is not None and config.set_timing_cache(cache, False):
        if blob:
            logger.debug("using timing cache %s (%d bytes)", path, len(blob))
        return
    logger.warning("TensorRT refused the timing cache %s; starting an empty one", path)
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Save the config's timing cache for the next build; a failure only costs build time, so it warns."""
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        blob = bytes(cache.serialize())  # an IHostMemory (buffer protocol)
        with atomic_writer(path) as stream:
            stream.write(blob)
    except OSError as err:
        logger.warning("cannot save the timing cache %s: %s", path, err)
    else:
        logger.debug("saved timing cache %s (%d bytes)", path, len(blob))
