"""Errors raised by :mod:`engines`, grouped by the phase in which they happen.

::

    FaceApplianceError             the project's one root; appliance.errors.ApplianceError is its other branch
     +-- FileReadError            a file that cannot be read safely: missing, not a regular file, too large
     +-- EngineError
         +-- ModelRegistryError       asking for a model the registry does not know
         +-- ModelFetchError          a download or copy failed (network, disk, 404)
         |    +-- ModelIntegrityError a file's size or sha256 is not what the registry says
         +-- ModelMissingError        a model file is not where it should be, or is not verified
         +-- ModelPreparationError    an ONNX graph edit failed or changed the model's outputs
         +-- BackendUnavailableError  the back-end's library cannot be imported (also NotImplementedError)
         +-- EngineBuildError         TensorRT cannot parse the ONNX model or build an engine from it
         +-- EngineLoadError          the library is there but cannot load this model, or its I/O differs
         |    +-- EngineMissingError  no cached TensorRT engine fits (and building on open is off)
         +-- InferenceError           a run failed: wrong input shape or dtype, runtime error, closed
         +-- CalibrationError         INT8 calibration (:mod:`calibration`, the TensorRT calibrator)
              +-- CalibrationDataError  calibration data that cannot be used (see calibration.errors)
"""

from __future__ import annotations


class FaceApplianceError(Exception):
    """The project's one error root: every error of :mod:`engines`, :mod:`calibration` and :mod:`appliance`.

    It lives here because :mod:`engines` is the bottom layer (DESIGN §3: ``appliance → engines``,
    ``calibration → engines``); :class:`appliance.errors.ApplianceError` derives from it.
    """


class FileReadError(FaceApplianceError):
    """A file named by the configuration or the command line that cannot be read safely.

    Example scenarios: the path names ``/dev/zero`` (or a link to it), a FIFO, a directory, a symlink
    loop, or a file larger than the reader accepts; the file is missing or unreadable.
    :func:`engines.files.read_bounded` raises it; callers add the key or option that named the file.

    Attributes:
        path: the file.
        reason: what is wrong, worded to follow the path ("is not a regular file (a character device)").
        missing: the file does not exist (callers often say how to create it).
    """

    def __init__(self, path: str, reason: str, missing: bool = False) -> None:
        self.path = path
        self.reason = reason
        self.missing = missing
        super().__init__(f"{path} {reason}")


class EngineError(FaceApplianceError):
    """Base class of every error raised by :mod:`engines`."""


class ModelRegistryError(EngineError, KeyError):
    """A model name that is not in the registry, e.g. a typo on the command line."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelFetchError(EngineError):
    """Fetching a model failed: the server or mirror is unreachable, answers 404, or the disk is full."""


class ModelIntegrityError(ModelFetchError):
    """A fetched or stored model file does not have the registry's size and sha256.

    Example scenarios: a truncated download, a corrupted mirror, an upstream file replaced in place.
    """


class ModelMissingError(EngineError):
    """A model the configuration needs is absent or fails verification in the models directory."""


class ModelPreparationError(EngineError):
    """ONNX preparation (e.g. making the batch dimension dynamic) failed or altered the outputs."""


class BackendUnavailableError(EngineError, NotImplementedError):
    """The requested back-end's runtime cannot be imported on this machine.

    Example scenarios: ``tensorrt`` asked for on a machine without TensorRT; ``onnxruntime`` not
    installed because the ``cpu`` extra was not.
    """


class EngineBuildError(EngineError):
    """Building a TensorRT engine failed.

    Example scenarios: the ONNX parser rejects an operator (every parser error is listed), the
    builder runs out of workspace or finds no tactic, the build was cancelled, the engine cache
    cannot be written (a full disk).
    """


class EngineLoadError(EngineError):
    """The runtime is present but cannot load this model, or the model's inputs and outputs do not
    match the registry (wrong names, ranks, fixed sizes or dtypes)."""


class EngineMissingError(EngineLoadError):
    """No cached TensorRT engine fits this model on this device, and the back-end was told not to build one.

    Example scenarios: the engine cache is empty after an install, a TensorRT upgrade or a new ONNX
    model made the cached engine stale, a cached engine no longer deserializes. The message says what
    did not match; ``face-appliance engines build`` (or the daemon, in the background) builds it.
    """


class InferenceError(EngineError):
    """A run failed: inputs of the wrong name, shape or dtype, a runtime error, or a closed back-end."""


class CalibrationError(EngineError):
    """Base class of the INT8 calibration errors (:mod:`calibration`, :mod:`engines.tensorrt.calibrator`)."""


class CalibrationDataError(CalibrationError):
    """The calibration or evaluation data cannot be used.

    Example scenarios: every source image fails to decode; no face is found in any image, so the
    embedder's set is empty; ``sets.json`` names a shape or a sha256 its ``.npy`` file does not have
    (a set copied half-way); a labelled folder with fewer than two identities; a calibration batch
    file of the wrong shape.
    """
