"""Fixtures of the integration tests: a real Mosquitto broker per test and a recording client."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

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
