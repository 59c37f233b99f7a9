"""Runs at interpreter start when this folder is on ``PYTHONPATH``: a daemon subprocess started by a
test then runs on the fake TensorRT and pycuda (:mod:`tests.fake_tensorrt`) — hardware that does not
exist on these machines — as configured by ``FACE_APPLIANCE_FAKE_TENSORRT``."""

import os

if os.environ.get("FACE_APPLIANCE_FAKE_TENSORRT"):
    from tests.fake_tensorrt import install_from_environment

    install_from_environment()
