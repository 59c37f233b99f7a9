"""The container files, checked without a container daemon (none runs on the development machines or CI).

docker/Dockerfile.* pin their base images and name a Python that setup.py accepts; the JetPack images
take OpenCV and TensorRT from NVIDIA and ONNX Runtime as setup.py names it; every package setup.py
installs reaches the build context; compose.yaml provides every secret the container configurations
name, where they name it; those configurations load; and the images' health check reads the daemon's
real Prometheus page. scripts/lint-deploy.sh runs hadolint and shellcheck over the same files.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from appliance.config_load import load_config
from appliance.metrics import PrometheusServer

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE = REPO_ROOT / "compose.yaml"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SETUP_PY = REPO_ROOT / "setup.py"
CONTAINER_CONFIGS = [DOCKER_DIR / "appliance.toml", DOCKER_DIR / "appliance-cpu.toml"]
MOSQUITTO_CONF = DOCKER_DIR / "mosquitto" / "mosquitto.conf"

#: The Python each JetPack's Ubuntu ships (README, "Deploying on a Jetson"); the CPU image's is free.
JETPACK_PYTHON = {"jetpack5": "3.8", "jetpack6": "3.10", "jetpack7": "3.12"}
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile.*"))
PIP_OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python")


# --- reading the files --------------------------------------------------------------------------------


def logical_lines(dockerfile: Path) -> List[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: List[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def global_args(lines: List[str]) -> Dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM lines can use), expanded in order."""
    values: Dict[str, str] = {}
    for line in lines:
        if line.upper().startswith("FROM "):
            break
        match = re.match(r"ARG\s+(\w+)=(\S+)$", line, re.IGNORECASE)
        if match:
            values[match.group(1)] = expand(match.group(2), values)
    return values


def expand(text: str, values: Dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def base_images(dockerfile: Path) -> List[str]:
    """The images the FROM lines pull (stage names they refer back to excluded), ARGs expanded."""
    lines = logical_lines(dockerfile)
    values = global_args(lines)
    stages: Set[str] = set()
    images: List[str] = []
    for line in lines:
        match = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", line, re.IGNORECASE)
        if not match:
            continue
        image = expand(match.group(1), values)
        if image not in stages:
            images.append(image)
        if match.group(2):
            stages.add(match.group(2))
    return images


def setup_keyword(name: str) -> ast.expr:
    """The value node of a keyword argument of setup() in setup.py."""
    tree = ast.parse(SETUP_PY.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == name:
                    return keyword.value
    raise AssertionError(f"setup.py has no setup({name}=...)")


def python_requires() -> SpecifierSet:
    return SpecifierSet(ast.literal_eval(setup_keyword("python_requires")))


def extras() -> Dict[str, List[str]]:
    return ast.literal_eval(setup_keyword("extras_require"))


def installed_packages() -> List[str]:
    """The top-level packages setup.py installs (find_packages(include=[...]) without the globs)."""
    call = setup_keyword("packages")
    assert isinstance(call, ast.Call)
    include = next(k.value for k in call.keywords if k.arg == "include")
    names = ast.literal_eval(include)
    return sorted({name.split(".")[0] for name in names})


def credential_names(config: Path) -> Set[str]:
    """NAME of every ``${CREDENTIALS_DIRECTORY}/NAME`` the configuration sets (comments aside)."""
    names: Set[str] = set()
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        names.update(re.findall(r'"\$\{CREDENTIALS_DIRECTORY\}/([^"/]+)"', line))
    return names


def top_level_block(text: str, key: str) -> str:
    """The lines of a top-level YAML mapping ``key:`` up to the next top-level key."""
    match = re.search(rf"^{key}:[ \t]*\n((?:(?:[ \t]+.*|[ \t]*#.*|)\n)*)", text, re.MULTILINE)
    assert match, f"compose.yaml has no top-level {key}:"
    return match.group(1)


# --- Dockerfiles ----------------------------------------------------------------------------------------


def test_the_four_images_are_there() -> None:
    names = {path.name for path in DOCKERFILES}
    assert names == {"Dockerfile.cpu"} | {f"Dockerfile.{jetpack}" for jetpack in JETPACK_PYTHON}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_base_images_are_pinned_by_tag_or_digest(dockerfile: Path) -> None:
    images = base_images(dockerfile)
    assert images, f"{dockerfile.name}: no FROM"
    for image in images:
        assert "$" not in image, f"{dockerfile.name}: {image} has a variable without a default"
        name, _, digest = image.partition("@")
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{dockerfile.name}: bad digest in {image}"
        last = name.rsplit("/", 1)[-1]
        assert ":" in last, f"{dockerfile.name}: {image} has no tag"
        tag = last.split(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"{dockerfile.name}: {image} is not a version tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_python_version_is_one_that_setup_py_accepts(dockerfile: Path) -> None:
    values = global_args(logical_lines(dockerfile))
    assert "PYTHON_VERSION" in values, f"{dockerfile.name} names no ARG PYTHON_VERSION"
    version = Version(values["PYTHON_VERSION"])
    assert version in python_requires(), f"{dockerfile.name}: Python {version} is outside {python_requires()}"
    jetpack = dockerfile.name.split(".", 1)[1]
    if jetpack in JETPACK_PYTHON:
        assert f"{version.major}.{version.minor}" == JETPACK_PYTHON[jetpack]
    # The build stops when the base image's interpreter is another one.
    assert "$PYTHON_VERSION" in dockerfile.read_text(encoding="utf-8")


def test_the_oldest_python_setup_py_accepts_is_the_one_of_jetpack_5() -> None:
    floor = min(Version(v) for v in JETPACK_PYTHON.values())
    assert floor in python_requires()
    assert Version(f"{floor.major}.{floor.minor - 1}") not in python_requires()


@pytest.mark.parametrize("jetpack", sorted(JETPACK_PYTHON))
def test_jetpack_images_keep_nvidia_opencv_and_tensorrt(jetpack: str) -> None:
    dockerfile = DOCKER_DIR / f"Dockerfile.{jetpack}"
    text = dockerfile.read_text(encoding="utf-8")
    lines = logical_lines(dockerfile)
    chosen = set(global_args(lines)["EXTRAS"].split(","))
    assert "jetson" in chosen and "cpu" not in chosen, "the cpu extra would install opencv-python-headless"
    assert "--system-site-packages" in text
    installs = [line for line in lines if "pip install" in line]
    assert not any(name + '"' in line or name + " " in line for line in installs for name in PIP_OPENCV)
    # ONNX Runtime for the CPU fallback, with the requirement setup.py's cpu extra names.
    ort = next(r for r in extras()["cpu"] if Requirement(r).name == "onnxruntime")
    assert any(f'"{ort}"' in line for line in installs), f"{dockerfile.name} does not install {ort!r}"
    # The check that no pip OpenCV got in, and that cv2 and tensorrt come from outside the venv.
    assert "opencv-python-headless" in text and "find_spec" in text


def test_install_script_gives_a_jetson_the_onnx_runtime_of_the_cpu_extra() -> None:
    """install.sh's Jetson branch names ONNX Runtime itself (the cpu extra would bring pip's OpenCV):
    the same requirement as setup.py's, so that moving the cap there cannot leave the boards behind."""
    ort = next(r for r in extras()["cpu"] if Requirement(r).name == "onnxruntime")
    script = (REPO_ROOT / "systemd" / "install.sh").read_text(encoding="utf-8")
    jetson = [
        line for line in script.splitlines() if line.strip().startswith("packages=(") and "[jetson" in line
    ]
    assert len(jetson) == 1, "install.sh should set its Jetson packages in one packages=(...) line"
    words = shlex.split(jetson[0].split("packages=(", 1)[1].rsplit(")", 1)[0])
    named = [Requirement(word) for word in words if "$" not in word]  # not "${SOURCE}[jetson,…]"
    assert [str(r) for r in named if r.name == "onnxruntime"] == [str(Requirement(ort))], (
        f"install.sh installs {jetson[0].strip()!r} on a Jetson; setup.py's cpu extra says {ort!r}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_the_daemon_unprivileged_with_a_health_check(dockerfile: Path) -> None:
    lines = logical_lines(dockerfile)
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")) :]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "healthcheck.py" in line for line in final)
    assert 'ENTRYPOINT ["face-appliance", "run"]' in final
    scripts = ast.literal_eval(setup_keyword("entry_points"))["console_scripts"]
    assert any(script.startswith("face-appliance =") for script in scripts)
    assert "FACE_APPLIANCE_CONFIG=/etc/face-appliance/appliance.toml" in " ".join(final)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_install_this_checkout_with_every_package(dockerfile: Path) -> None:
    lines = logical_lines(dockerfile)
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line}
    for package in installed_packages():
        assert package in copied, f"{dockerfile.name} does not copy {package}/"
    assert "setup.py" in copied and "docker/healthcheck.py" in copied
    # setup.py reads README.md (long_description) and pyproject.toml names the build back-end.
    assert any(line.startswith("COPY setup.py pyproject.toml README.md ") for line in lines)
    assert any('pip install "/src[${EXTRAS}]"' in line for line in lines)


def test_dockerignore_lets_in_only_what_pip_install_needs() -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] in ("*", "**"), "the context starts from nothing"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for package in installed_packages():
        assert package in allowed
    assert {"setup.py", "pyproject.toml", "README.md", "docker/healthcheck.py"} <= allowed
    assert not allowed & {"var", "tests", ".venv", "secrets", "bench", ".git"}


# --- compose.yaml and the configurations -------------------------------------------------------------


def expected_secrets() -> Set[str]:
    names: Set[str] = set()
    for config in CONTAINER_CONFIGS:
        names |= credential_names(config)
    return names


def test_configurations_name_the_same_credentials() -> None:
    first, second = (credential_names(config) for config in CONTAINER_CONFIGS)
    assert first == second
    assert {"mqtt_password", "gallery_key", "uds_secret", "fleet_key", "osdp_scbk"} <= first


def test_compose_declares_each_secret_the_configurations_name() -> None:
    """Text-level (PyYAML is not a dependency): every secret is declared with a file and given to the
    appliance services, whose CREDENTIALS_DIRECTORY is where Compose mounts secrets."""
    text = COMPOSE.read_text(encoding="utf-8")
    declared = top_level_block(text, "secrets")
    for name in sorted(expected_secrets()):
        assert re.search(rf"^  {name}:\n    file: \S+/{name}$", declared, re.MULTILINE), name
        assert re.search(rf"^    - {name}$", text, re.MULTILINE), f"no service is given {name}"
    assert "CREDENTIALS_DIRECTORY: /run/secrets" in text


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A credentials folder as compose.yaml's README procedure makes it, as CREDENTIALS_DIRECTORY."""
    values = {
        "mqtt_password": "a broker password",
        "gallery_key": "ab" * 32,
        "uds_secret": "cd" * 32,
        "fleet_key": "",
        "fleet_key_previous": "",
        "osdp_scbk": "",
    }
    for name in expected_secrets():
        path = tmp_path / name
        path.write_text(values.get(name, "x") + "\n", encoding="utf-8")
        path.chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("config_file", CONTAINER_CONFIGS, ids=lambda path: path.name)
def test_container_configurations_load(config_file: Path, credentials: Path) -> None:
    config = load_config(config_file)
    assert config.mqtt.password_file == credentials / "mqtt_password"
    assert config.metrics.prometheus, "the images' HEALTHCHECK reads the Prometheus endpoint"
    assert str(config.storage.dir) == "/var/lib/face-appliance"
    expected_backend = "cpu" if config_file.name == "appliance-cpu.toml" else "tensorrt"
    assert config.backend.type == expected_backend


def test_mosquitto_reads_its_password_file_from_its_secret() -> None:
    conf = MOSQUITTO_CONF.read_text(encoding="utf-8")
    assert re.search(r"^allow_anonymous false$", conf, re.MULTILINE)
    path = re.search(r"^password_file (\S+)$", conf, re.MULTILINE)
    assert path and path.group(1).startswith("/run/secrets/")
    name = path.group(1).rsplit("/", 1)[1]
    assert re.search(
        rf"^  {name}:\n    file: ", top_level_block(COMPOSE.read_text(encoding="utf-8"), "secrets"), re.M
    )


def compose_document() -> Dict[str, object]:
    yaml = pytest.importorskip(
        "yaml",
        reason="PyYAML is not installed (no dependency of face-appliance[dev]); compose.yaml's structure "
        "is then checked only at the text level above",
    )
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_compose_parses_and_wires_the_services() -> None:
    document = compose_document()
    services = document["services"]
    assert set(services) == {"appliance", "appliance-cpu", "mosquitto"}
    for name in ("appliance", "appliance-cpu"):
        service = services[name]
        assert service["network_mode"] == "host"
        assert service["environment"]["CREDENTIALS_DIRECTORY"] == "/run/secrets"
        assert set(service["secrets"]) == expected_secrets()
        assert service["build"]["context"] == "."
    assert services["appliance"]["runtime"] == "nvidia"
    assert services["appliance"]["build"]["dockerfile"] == "docker/Dockerfile.${JETPACK:-jetpack6}"
    assert services["appliance-cpu"]["profiles"] == ["cpu"]
    assert services["appliance-cpu"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert set(document["secrets"]) >= expected_secrets()
    image = services["mosquitto"]["image"]
    assert re.fullmatch(r"eclipse-mosquitto:\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", image)


# --- the health check ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DOCKER_DIR / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def metrics_endpoint() -> Iterator[Tuple[PrometheusServer, Dict[str, object]]]:
    """The daemon's own Prometheus server on a free loopback port, serving a state we control."""
    state: Dict[str, object] = {"ready": False, "fps": 0.0}
    server = PrometheusServer(0, lambda: state)
    server.start()
    try:
        yield server, state
    finally:
        server.stop()


def write_config(path: Path, prometheus: bool, port: int) -> Path:
    path.write_text(
        f"[metrics]\nprometheus = {str(prometheus).lower()}\nprometheus_port = {port}\n", encoding="utf-8"
    )
    return path


def test_health_check_follows_the_daemons_ready_gauge(
    healthcheck: ModuleType,
    metrics_endpoint: Tuple[PrometheusServer, Dict[str, object]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, state = metrics_endpoint
    config = write_config(tmp_path / "appliance.toml", True, server.address[1])
    monkeypatch.setenv("FACE_APPLIANCE_CONFIG", str(config))
    assert healthcheck.main() == 1  # starting
    state["ready"] = True
    assert healthcheck.main() == 0


def test_health_check_without_endpoint(
    healthcheck: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on the port: unhealthy. Prometheus off: nothing to ask, the process is up.
    closed = PrometheusServer(0, dict)
    port = closed.address[1]
    closed.stop()
    monkeypatch.setenv("FACE_APPLIANCE_CONFIG", str(write_config(tmp_path / "on.toml", True, port)))
    assert healthcheck.main() == 1
    monkeypatch.setenv("FACE_APPLIANCE_CONFIG", str(write_config(tmp_path / "off.toml", False, port)))
    assert healthcheck.main() == 0
    monkeypatch.setenv("FACE_APPLIANCE_CONFIG", str(tmp_path / "missing.toml"))
    assert healthcheck.main() == 1
