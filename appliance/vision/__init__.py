"""The recognition core: detection (MTCNN, YuNet), alignment, embedding, liveness.

Written once on top of :class:`engines.backends.InferenceBackend`, so the CPU and TensorRT paths run
the same pre- and post-processing. Images are ``(H, W, 3)`` uint8 BGR arrays, as OpenCV decodes them.
"""
