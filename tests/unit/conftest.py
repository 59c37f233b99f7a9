"""Fixtures unit tests share: a signing key pair, its trust store, a tiny model (model packages); an
empty gallery; simulated GPIO chips and door controllers started on them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Tuple

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.door.controller import DoorController
from appliance.door.settings import DoorConfig
from appliance.updates.keys import generate_keypair, key_id, load_private_key
from tests.door_support import Recorder
from tests.fake_gpio import GpioSim, door_sim, install
from tests.package_tools import tiny_rnet

if TYPE_CHECKING:
    from appliance.gallery.gallery import Gallery


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ed25519PrivateKey]:
    """A release signing key (private half)."""
    pair = generate_keypair(tmp_path_factory.mktemp("keys"), "unit")
    yield load_private_key(pair.private_path)


@pytest.fixture(scope="module")
def trusted(keypair: Ed25519PrivateKey) -> Dict[str, Ed25519PublicKey]:
    """The trust store that holds :func:`keypair`'s public half."""
    return {key_id(keypair.public_key()): keypair.public_key()}


@pytest.fixture
def rnet_file(tmp_path: Path) -> Path:
    """A tiny ONNX model with R-Net's inputs and outputs."""
    path = tmp_path / "rnet.onnx"
    path.write_bytes(tiny_rnet())
    return path


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    """An empty gallery in ``tmp_path``: 128-d templates of ``mobilefacenet@foamliu-v1.0``."""
    from appliance.config_load import validate_config  # imported here: most unit tests need no Faiss
    from appliance.gallery.gallery import Gallery

    with Gallery.open(
        validate_config({"storage": {"dir": str(tmp_path)}}), "mobilefacenet@foamliu-v1.0", 128
    ) as opened:
        yield opened


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> GpioSim:
    """The door's simulated chips (:func:`tests.fake_gpio.door_sim`) behind the ``gpiod`` 2.x double."""
    sim = door_sim()
    install(monkeypatch, "gpiod", sim)
    return sim


@pytest.fixture
def started() -> Any:
    """Starts controllers and closes every one of them at the end of the test."""
    made: List[DoorController] = []

    def start(config: DoorConfig, **kwargs: Any) -> Tuple[DoorController, Recorder]:
        door = DoorController(config, **kwargs)
        recorder = Recorder()
        door.start(recorder)
        made.append(door)
        return door, recorder

    yield start
    for door in made:
        door.close(5.0)
