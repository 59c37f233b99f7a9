"""Runs at interpreter start when this folder is on ``PYTHONPATH``: a daemon subprocess started by a
test then runs on doubles of hardware that does not exist on these machines — the fake TensorRT and
pycuda (:mod:`tests.fake_tensorrt`) as configured by ``FACE_APPLIANCE_FAKE_TENSORRT``, the ``gpiod``
double over simulated chips (:mod:`tests.fake_gpio`) with ``FACE_APPLIANCE_FAKE_GPIO``."""

import os

if os.environ.get("FACE_APPLIANCE_FAKE_TENSORRT"):
    from tests.fake_tensorrt import install_from_environment

    install_from_environment()

if os.environ.get("FACE_APPLIANCE_FAKE_GPIO"):
    from tests.fake_gpio import install_from_environment as install_gpio

    install_gpio()
