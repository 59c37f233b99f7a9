"""FP16 ONNX models made on the device, for TensorRT versions that build strongly typed networks only.

TensorRT 11 removed the precision builder flags (``BuilderFlag.FP16``/``INT8``): every network is
strongly typed, so an engine runs in FP16 only where the ONNX graph's tensors are FP16 (NVIDIA's
"Migrating from TensorRT 10.x to 11.x": *Strongly Typed Networks Are Now Required*). The appliance
ships FP32 ONNX models; on such a TensorRT the builder converts the prepared FP32 model here, with
``onnxconverter-common``'s ``float16.convert_float_to_float16(model, keep_io_types=True)``:

* weights and activations become float16; the graph's inputs and outputs stay float32 (Cast nodes are
  inserted at the edges), so the back-end feeds and reads float32 buffers as it does for every engine;
* float32 constants smaller than float16 can hold are clamped to ±1e-7 (the converter's default;
  its per-value warnings are counted and logged once here instead);
* the result must pass ``onnx.checker``.

The conversion is deterministic for a given converter release, so an engine built from it is cached
under the FP32 model's sha256 plus :func:`converter_version` (see :mod:`engines.tensorrt.cache`), and
the manifest records the sha256 of the FP16 bytes TensorRT parsed. ``tests/integration/test_fp16.py``
checks the converted MobileFaceNet and MTCNN O-Net against FP32 on real faces on the CPU back-end, the
way the INT8 models are checked.

``onnxconverter-common`` (pure Python, Python ≥ 3.8) is in the ``jetson`` extra; it is imported only
when a model is converted.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

from ..errors import EngineBuildError

logger = logging.getLogger(__name__)

#: The distribution that converts FP32 ONNX to FP16 (``pip install 'face-appliance[jetson]'``).
CONVERTER = "onnxconverter-common"
#: Smallest magnitude the converter keeps (its default); smaller non-zero values are clamped to it.
MIN_POSITIVE = 1e-7


def converter_version() -> Optional[str]:
    """``"onnxconverter-common 1.16.0"``, or ``None`` when the converter is not installed.

    Read from the installed distribution's metadata (nothing is imported), so it is cheap enough to
    be part of every engine request on a TensorRT that needs it.
    """
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported
        return None
    try:
        return f"{CONVERTER} {version(CONVERTER)}"
    except PackageNotFoundError:
        return None


def missing_converter_reason() -> str:
    """What to do when the converter is absent (for logs, manifests and errors)."""
    return (
        f"FP16 on a strongly typed TensorRT needs an FP16 ONNX model, made on the device by {CONVERTER}, "
        "which is not installed: pip install 'face-appliance[jetson]'"
    )


def convert(model: bytes, name: str) -> bytes:
    """The FP16 version of the FP32 ONNX ``model`` (inputs and outputs stay float32).

    Args:
        model: the prepared FP32 ONNX bytes (:func:`engines.prepare.load_model_bytes`).
        name: the registry name, for messages.

    Raises:
        EngineBuildError: the converter is missing, or the model cannot be converted or the converted
            graph does not pass the ONNX checker (the message says which and what to do).
    """
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as err:
        raise EngineBuildError(f"{name}: {missing_converter_reason()} ({err})") from err
    try:
        proto = onnx.load_from_string(model)
    except Exception as err:  # protobuf's DecodeError and friends
        raise EngineBuildError(f"{name}: the ONNX model to convert to FP16 is unreadable: {err}") from err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = float16.convert_float_to_float16(
                proto, min_positive_val=MIN_POSITIVE, keep_io_types=True
            )
        except Exception as err:  # the converter raises ValueError, KeyError, ... on graphs it cannot handle
            raise EngineBuildError(
                f"{name}: {CONVERTER} cannot convert the model to FP16 ({type(err).__name__}: {err}); "
                'build FP32 instead (precision = "fp32") and report the model'
            ) from err
    clamped = sum(1 for item in caught if "truncated" in str(item.message))
    if clamped:
        logger.info("%s: %d float32 constants below %g were clamped for FP16", name, clamped, MIN_POSITIVE)
    try:
        onnx.checker.check_model(converted)
    except Exception as err:  # onnx.checker.ValidationError
        raise EngineBuildError(
            f"{name}: the FP16 model made by {CONVERTER} does not pass the ONNX checker: {err}"
        ) from err
    data: bytes = converted.SerializeToString()
    logger.info("%s: converted to FP16 ONNX (%d → %d bytes)", name, len(model), len(data))
    return data


__all__ = ["CONVERTER", "MIN_POSITIVE", "convert", "converter_version", "missing_converter_reason"]
