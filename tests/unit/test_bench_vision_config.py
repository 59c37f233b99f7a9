"""``bench.vision --config``: the appliance's own configuration file decides the models and the
back-end (TensorRT on a Jetson), while the bench keeps its detector and liveness, so the figures
compare with the CPU back-end's; a wrong file or a contradicting flag is refused, not ignored."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import pytest

from appliance.errors import ConfigError
from bench import vision


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_the_file_gives_the_back_end_and_models_and_the_bench_its_detector(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[models]
dir = "my-models"

[backend]
type = "tensorrt"

[backend.tensorrt]
max_batch = 16

[detector]
type = "yunet"
min_face_px = 80

[liveness]
enabled = false
""",
    )
    config = vision.config_from_file(path)
    assert config.backend.type == "tensorrt" and config.backend.tensorrt.max_batch == 16
    assert (
        config.models.dir == (tmp_path / "my-models").resolve()
    )  # relative to the file, as the daemon reads it
    assert (config.detector.type, config.detector.min_face_px) == ("mtcnn", vision.MIN_FACE_PX)
    assert config.liveness.enabled


def test_a_wrong_file_is_refused_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend\.typo"):
        vision.config_from_file(_write(tmp_path, '[backend]\ntypo = "tensorrt"\n'))
    with pytest.raises(ConfigError, match=r"models"):
        vision.config_from_file(_write(tmp_path, 'models = "my-models"\n'))
    with pytest.raises(ConfigError, match="does not exist"):
        vision.config_from_file(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        vision.config_from_file(_write(tmp_path, "[backend\n"))


def test_only_the_models_and_the_back_end_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device's file, as ``systemd/install.sh`` leaves it, names a systemd credential that exists only
    inside the service: the bench, run from a shell, does not read that section (nor any other)."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = _write(
        tmp_path,
        '[backend]\ntype = "tensorrt"\n\n[storage]\ndir = "state"\n\n'
        '[gallery]\nkey_file = "${CREDENTIALS_DIRECTORY}/gallery_key"\n\n[detector]\nmax_side = 1\n',
    )
    config = vision.config_from_file(path)
    assert (
        config.backend.type == "tensorrt" and config.engine_dir == (tmp_path / "state" / "engines").resolve()
    )
    assert config.gallery.key_file is None and config.detector.max_side != 1


@pytest.mark.parametrize("flag", [["--threads", "2"], ["--models-dir", "x"]])
def test_config_with_a_flag_it_overrides_is_refused(
    tmp_path: Path, flag: List[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[backend]\ntype = "cpu"\n')
    monkeypatch.setattr(sys, "argv", ["bench.vision", "--config", str(path), *flag])
    with pytest.raises(SystemExit) as stopped:
        vision.main()
    assert stopped.value.code == 2
    assert "drop --models-dir and --threads" in capsys.readouterr().err
