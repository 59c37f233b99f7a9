"""Fixtures of the integration tests: a real Mosquitto broker per test, a recording client, the real
models loaded once per module, and a storage folder with one enrolled person."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import load_analyzer
from appliance.vision.analyzer import FaceAnalyzer
from tests.fault_runs import door_storage
from tests.mqtt_broker import MosquittoBroker, MosquittoMissingError, Recorder


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh ``mosquitto`` on a free 127.0.0.1 port (anonymous, no persistence), stopped after the test.

    Fails (does not skip) when the binary is missing: CI installs it.
    """
    broker = MosquittoBroker(tmp_path / "mosquitto")
    try:
        broker.start()
    except MosquittoMissingError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def recorder(mosquitto: MosquittoBroker) -> Iterator[Recorder]:
    """A client subscribed to ``#`` on the ``mosquitto`` broker, recording every message."""
    with Recorder(mosquitto.host, mosquitto.port, "#") as started:
        yield started


@pytest.fixture(scope="module")
def analyzer(shared_models: Path) -> Iterator[FaceAnalyzer]:
    """The real models (CPU back-end, no liveness), loaded once per test module."""
    with load_analyzer(validate_config({"models": {"dir": str(shared_models)}}), liveness=False) as loaded:
        yield loaded


@pytest.fixture
def storage(tmp_path: Path, analyzer: FaceAnalyzer, shared_data: Path) -> Path:
    """A storage folder whose gallery holds Barack Obama (one photo)."""
    return door_storage(tmp_path / "state", analyzer, shared_data)
