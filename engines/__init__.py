"""Model artifacts and inference back-ends.

The model registry (what each model is, where it comes from, how it is pre-processed), verified
fetching, ONNX preparation, and the inference back-end interface with its ONNX Runtime (CPU) and
TensorRT (Jetson) implementations. Nothing here imports :mod:`appliance`.
"""
