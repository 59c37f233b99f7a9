"""INT8 calibration for the TensorRT engines.

Calibration sets built from face crops and frames, the TensorRT entropy calibrator and its cache,
explicit quantization (QDQ ONNX through ONNX Runtime's static quantizer), and the report that
compares INT8 with FP32. Imports go one way: ``calibration → engines``.
"""
