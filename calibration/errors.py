"""Errors raised by :mod:`calibration` (the first two live in :mod:`engines.errors`, which the TensorRT
calibrator shares), part of the :class:`engines.errors.EngineError` tree.

::

    EngineError
     +-- CalibrationError
          +-- CalibrationDataError  no usable source image, an empty set, a set file that does not
          |    |                    match its sets.json, a labelled folder without labels
          |    +-- SourceError      one source image or video (or a labelled image) that cannot be
          |                         read or decoded: skipped and reported, the others go on
          +-- QuantizationError     ONNX Runtime's static quantizer failed, or its model does not load
                                    on the CPU back-end with the registry's inputs and outputs

An INT8 model that falls outside the configured limits is not an error: the gate reports which limit
failed (:class:`calibration.report.GateResult`) and the command exits 1.
"""

from __future__ import annotations

from engines.errors import CalibrationDataError, CalibrationError

__all__ = ["CalibrationDataError", "CalibrationError", "QuantizationError", "SourceError"]


class QuantizationError(CalibrationError):
    """Making the INT8 (QDQ) model failed.

    Example scenarios: ONNX Runtime's quantizer rejects the graph or runs out of memory; the QDQ
    model it wrote cannot be loaded by the CPU back-end or its inputs and outputs differ from the
    registry's.
    """


class SourceError(CalibrationDataError):
    """One source image or video, or one labelled image, cannot be read or decoded.

    Raised by a :class:`calibration.interfaces.FrameDecoder` (the appliance's image reader and video
    file source translate their own errors into it, keeping the message). Calibration skips that
    source, records the message as the reason, and goes on with the others.

    Example scenarios: a truncated JPEG; an empty file; a ``.mp4`` that no OpenCV back-end opens; a
    video whose decoding fails half-way.
    """
