"""Fuzzing the configuration loader: any file gives a valid configuration or a ConfigError with key paths.

Three kinds of input: arbitrary text, byte-level mutations of the documented ``config/appliance.toml``,
and structural mutations of its parsed tables (a value replaced by any TOML value, a key deleted, an
unknown key added, a table replaced by a scalar). Whatever comes in, :func:`load_config` /
:func:`validate_config` either return a configuration whose numbers are all finite, or raise
:class:`ConfigError` whose every issue names the key it is about (only a file that is not TOML at
all has an issue without a key path); no other exception, no hang on a special file.
"""

from __future__ import annotations

import copy
import datetime
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from appliance.config import ApplianceConfig
from appliance.config_load import load_config, validate_config
from appliance.errors import ConfigError
from tests.conftest import REPO_ROOT
from tests.fuzz.conftest import fuzz_settings

DOCUMENTED = REPO_ROOT / "config" / "appliance.toml"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KeyPath = Tuple[Union[str, int], ...]


def _documented() -> Dict[str, Any]:
    return tomllib.loads(DOCUMENTED.read_text(encoding="utf-8"))


def _paths(node: Any, prefix: KeyPath = ()) -> List[KeyPath]:
    """Every key path of a parsed TOML document (tables, values and array items)."""
    found: List[KeyPath] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


_DOCUMENTED_PATHS = _paths(_documented())

#: Values TOML can express (tomllib gives these types), with the awkward ones well represented.
_toml_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "/dev/zero", "..", "${CREDENTIALS_DIRECTORY}/x", "a" * 5000, "é/ü"]),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    st.dates(),
    st.times(),
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def _mutated_document(draw: st.DrawFn) -> Dict[str, Any]:
    document = _documented()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(_DOCUMENTED_PATHS))
        parent: Any = document
        try:
            for part in path[:-1]:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this branch
        leaf = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "unknown_key"]))
        try:
            if action == "replace":
                parent[leaf] = draw(_toml_values)
            elif action == "delete":
                del parent[leaf]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=12))] = draw(_toml_values)
        except (KeyError, IndexError, TypeError):
            continue
    return document


def _finite_numbers(node: Any) -> bool:
    if isinstance(node, BaseModel):
        return all(_finite_numbers(getattr(node, name)) for name in type(node).model_fields)
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, (list, tuple)):
        return all(_finite_numbers(item) for item in node)
    return True


def _check_outcome(load: Any, whole_file_issues_allowed: bool) -> None:
    try:
        config = load()
    except ConfigError as err:
        assert err.issues, "a ConfigError without issues"
        assert str(err)
        for issue in err.issues:
            assert issue.message, issue
            if not whole_file_issues_allowed:
                assert issue.path, f"an issue without a key path: {issue}"
        return
    assert isinstance(config, ApplianceConfig)
    assert _finite_numbers(config), "a configuration with NaN or infinity was accepted"


def test_documented_config_is_valid() -> None:
    assert isinstance(load_config(DOCUMENTED), ApplianceConfig)


def test_arbitrary_documents_from_the_documented_one(tmp_path: Path, budget: Any) -> None:
    spent = budget("config: mutated tables")

    @fuzz_settings(300)
    @given(_mutated_document())
    @example({"mqtt": {"username": "door", "password_file": "/dev/zero"}})
    @example({"mqtt": {"username": "door", "password_file": "/"}})
    @example({"mqtt": {"username": "door", "password_file": "a\x00b"}})
    @example({"match": {"threshold": math.nan}})
    @example({"camera": {"fps": math.inf}})
    @example({"storage": {"dir": "${CREDENTIALS_DIRECTORY}/x"}})
    @example({"device": []})
    @example({"decision": {"votes": 9, "window": 2}})
    def run(document: Dict[str, Any]) -> None:
        if not spent.spend():
            return
        _check_outcome(lambda: validate_config(copy.deepcopy(document), base_dir=tmp_path), False)

    run()


def _mutate_bytes(data: bytes, edits: List[Tuple[int, int, bytes]]) -> bytes:
    for offset, delete, insert in edits:
        position = offset % max(1, len(data))
        data = data[:position] + insert + data[position + delete :]
    return data


def test_byte_mutations_of_the_documented_file(tmp_path: Path, budget: Any) -> None:
    original = DOCUMENTED.read_bytes()
    spent = budget("config: mutated file bytes")
    target = tmp_path / "appliance.toml"

    @fuzz_settings(300)
    @given(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=len(original)),
                st.integers(min_value=0, max_value=64),
                st.binary(max_size=16) | st.sampled_from([b"=", b"[", b"]", b'"', b"\n[x]\n", b"\xff"]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    @example([(0, 0, b"\xef\xbb\xbf")])  # a UTF-8 byte order mark
    @example([(0, 0, b"[mqtt]\n")])  # a table defined twice
    def run(edits: List[Tuple[int, int, bytes]]) -> None:
        if not spent.spend():
            return
        target.write_bytes(_mutate_bytes(original, edits))
        _check_outcome(lambda: load_config(target), True)

    run()


def test_arbitrary_text(tmp_path: Path, budget: Any) -> None:
    spent = budget("config: arbitrary text")
    target = tmp_path / "appliance.toml"

    @fuzz_settings(200)
    @given(st.text(max_size=400) | st.binary(max_size=400))
    @example("mqtt.port = 1883\nmqtt.port = 1884\n")
    @example("[[camera]]\n")
    @example('device = {id = "x", id = "y"}')
    def run(content: Union[str, bytes]) -> None:
        if not spent.spend():
            return
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8", errors="surrogatepass")
        else:
            target.write_bytes(content)
        _check_outcome(lambda: load_config(target), True)

    run()


def test_missing_directory_and_special_files(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path, Path("/dev/null")):
        _check_outcome(lambda: load_config(path), True)  # noqa: B023
