"""TensorRT in one place: the back-end, the engine builder and cache, the platform probe, the
optimization profiles and the INT8 calibrator.

Importing this package imports nothing of TensorRT; the modules that need ``tensorrt`` and
``pycuda`` (:mod:`.backend`, :mod:`.builder`, :mod:`.calibrator`) import them at their own import,
and are imported only where engines are built or run.

Modules:
    platform   PlatformInfo, the L4T release reader, probe_platform, tensorrt_unavailable
    cache      engine requests, cache keys, manifests, precision choice, profiles
    builder    EngineBuilder (ONNX → serialized engine, per TensorRT version)
    backend    TensorRTBackend (an engine run through pycuda)
    calibrator EntropyCalibrator (implicit INT8 calibration, where the TensorRT version has it)
    batches    the calibration batch files the calibrator feeds
    service    EngineService, EngineTarget (plan, build, open one model's engine)
"""
