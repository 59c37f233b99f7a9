"""pybind11 signatures of the real TensorRT bindings, and whether traced argument types convert to them.

A signature is the text :mod:`.dump_surface` took from a pybind11 docstring, e.g.
``(self: tensorrt.tensorrt.Builder, flags: int = 0) -> tensorrt.tensorrt.INetworkDefinition``. An
argument is described as :mod:`.trace` records it: ``{"type": "int"}``, ``{"type": "enum", "class":
"BuilderFlag", "member": "FP16"}``, ``{"type": "tuple", "items": ["int"]}``, ``{"type": "object",
"class": "TrtLogBridge", "fake_mro": ["ILogger"], "fake": false}``...

The conversions follow pybind11's casters in "convert" mode (how the bindings are registered):
``int`` takes ints, bools and NumPy integers; ``float`` takes ints too; ``bool`` takes bools, ints and
NumPy booleans; ``str`` takes str and bytes; ``buffer`` anything with the buffer protocol; ``List[T]``
any sequence but str/bytes; ``Dims`` (and ``Dims2``...) lists and tuples of ints (TensorRT registers
those implicit conversions); a class takes instances of it and of its subclasses; an enum only its own
members; ``None`` only an ``Optional`` parameter or one whose default is ``None``.
"""

import logging
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

# Module prefixes of the bindings' own types, and C++ namespaces pybind11 shows for types it had not
# registered yet when the docstring was made (``nvinfer1::ILogger::Severity``).
PREFIXES = ("tensorrt.tensorrt.", "tensorrt.", "nvinfer1.", "nvonnxparser.")
ANY_TYPES = {"object", "Any", "typing.Any", "handle", ""}
INT_TYPES = {"int", "SupportsInt", "typing.SupportsInt", "SupportsIndex", "typing.SupportsIndex"}
FLOAT_TYPES = {"float", "SupportsFloat", "typing.SupportsFloat"}
DIMS_TYPES = {"Dims", "Dims2", "Dims3", "Dims4", "DimsHW", "Permutation"}
SEQUENCE_PREFIXES = (
    "List[",
    "Sequence[",
    "typing.List[",
    "typing.Sequence[",
    "collections.abc.Sequence[",
    "Iterable[",
    "typing.Iterable[",
    "collections.abc.Iterable[",
)
BARE_SEQUENCES = {
    "Sequence",
    "Iterable",
    "collections.abc.Sequence",
    "collections.abc.Iterable",
    "typing.Iterable",
}
# ``py::buffer`` as pybind11 2.x shows it, and as the 11.x bindings (newer pybind11) do.
BUFFER_TYPES = {"buffer", "Buffer", "collections.abc.Buffer", "typing_extensions.Buffer"}
# A ``void*`` parameter (shown as ``capsule``) takes None, a capsule, or an instance of a bound class.
VOID_POINTERS = {"capsule", "types.CapsuleType", "typing_extensions.CapsuleType"}
OPENERS, CLOSERS = "([{<", ")]}>"


class Param(NamedTuple):
    """One parameter of a signature."""

    name: str
    type: str  # normalized: ``ILogger.Severity``, ``List[int]``; "" when not annotated
    default: Optional[str]  # the default's text, None without one
    star: str  # "", "*" or "**"


def normalize_type(text: str) -> str:
    """Drop the bindings' module prefix: ``tensorrt.tensorrt.ILogger.Severity`` → ``ILogger.Severity``."""
    text = text.strip().replace("::", ".")
    for prefix in PREFIXES:
        text = text.replace(prefix, "")
    return text


def split_top_level(text: str, separator: str = ",") -> List[str]:
    """Split ``text`` at ``separator`` outside brackets and quotes."""
    parts: List[str] = []
    depth, quote, start = 0, "", 0
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in OPENERS and not (char == "<" and text[index - 1 : index] == "-"):
            depth += 1
        elif char in CLOSERS and not (char == ">" and text[index - 1 : index] == "-"):
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _parameter_text(signature: str) -> str:
    """The text between the signature's outer parentheses."""
    if not signature.startswith("("):
        raise ValueError(f"not a signature: {signature!r}")
    depth, quote = 0, ""
    for index, char in enumerate(signature):
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "'\"":
            quote = char
        elif char in OPENERS:
            depth += 1
        elif char in CLOSERS:
            depth -= 1
            if depth == 0:
                return signature[1:index]
    raise ValueError(f"unbalanced signature: {signature!r}")


def parse_signature(signature: str) -> List[Param]:
    """The parameters of a pybind11 or ``inspect`` signature text (``self`` included)."""
    params = []
    for item in split_top_level(_parameter_text(signature)):
        if item in ("/", "*"):
            continue
        star = "**" if item.startswith("**") else "*" if item.startswith("*") else ""
        pieces = split_top_level(item[len(star) :], "=")
        head = pieces[0]
        default = "=".join(pieces[1:]).strip() if len(pieces) > 1 else None
        name, _, annotation = head.partition(":")
        params.append(Param(name.strip(), normalize_type(annotation), default, star))
    return params


def strip_self(params: Sequence[Param]) -> List[Param]:
    """The parameters after ``self`` (or ``this``, as the bindings' Python helpers call it)."""
    if params and params[0].name in ("self", "this") and not params[0].star:
        return list(params[1:])
    return list(params)


def is_unnamed(name: str) -> bool:
    """pybind11 names the parameters it was given no name for ``arg0``, ``arg1``...: positional only."""
    return name.startswith("arg") and name[3:].isdigit()


def _inner(text: str, prefix: str) -> str:
    return text[len(prefix) : -1]


def _union_members(type_text: str) -> Tuple[List[str], bool]:
    """The alternatives of a type and whether it allows None (``Optional``/``Union[..., None]``)."""
    if type_text.startswith(("Optional[", "typing.Optional[")) and type_text.endswith("]"):
        inner = type_text[type_text.index("[") + 1 : -1]
        return split_top_level(inner), True
    if type_text.startswith(("Union[", "typing.Union[")) and type_text.endswith("]"):
        members = split_top_level(type_text[type_text.index("[") + 1 : -1])
        return [m for m in members if m not in ("None", "NoneType")], "None" in members
    return [type_text], False


class Surface:
    """One real version's surface (the JSON of :mod:`.dump_surface`) with lookups."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.version: str = str(data.get("version", ""))
        self.names: Dict[str, Any] = dict(data.get("names", {}))

    def lookup(self, dotted: str) -> Optional[Mapping[str, Any]]:
        """The entry of ``Builder`` or ``ILogger.Severity`` (nested members), or None."""
        parts = dotted.split(".")
        entry = self.names.get(parts[0])
        for part in parts[1:]:
            if entry is None or entry.get("kind") != "class":
                return None
            entry = entry.get("members", {}).get(part)
        return entry

    def ancestors(self, class_name: str) -> List[str]:
        """``class_name`` and its real base classes (``EntropyCalibrator2`` → ``IInt8Calibrator``)."""
        entry = self.names.get(class_name)
        if entry is None or entry.get("kind") != "class":
            return [class_name]
        return [class_name, *entry.get("mro", [])]


def describe_arg(arg: Mapping[str, Any]) -> str:
    """A short human text for an argument description."""
    kind = arg.get("type")
    if kind == "enum":
        return f"{arg.get('class')}.{arg.get('member')}"
    if kind == "object":
        return f"{arg.get('class')} object"
    if kind in ("list", "tuple"):
        return f"{kind}[{'|'.join(arg.get('items', [])) or ''}]"
    if kind == "ndarray":
        return f"numpy array ({arg.get('dtype')})"
    return str(kind)


def converts(arg: Mapping[str, Any], param: Param, surface: Surface) -> Tuple[bool, str]:
    """Whether pybind11 converts the traced argument to ``param``; a note when it cannot be checked."""
    alternatives, optional = _union_members(param.type)
    if arg.get("type") == "None":
        allowed = (
            optional or param.default == "None" or param.type in ANY_TYPES or param.type in VOID_POINTERS
        )
        return allowed, ""
    notes = []
    for alternative in alternatives:
        ok, note = _converts_to(arg, alternative, surface)
        if ok:
            return True, note
        if note:
            notes.append(note)
    return False, "; ".join(notes)


def _sequence_item(type_text: str) -> Optional[str]:
    for prefix in SEQUENCE_PREFIXES:
        if type_text.startswith(prefix) and type_text.endswith("]"):
            return _inner(type_text, prefix)
    return None


def _converts_to(arg: Mapping[str, Any], type_text: str, surface: Surface) -> Tuple[bool, str]:
    kind = arg.get("type")
    if type_text in ANY_TYPES:
        return True, ""
    if kind == "int":
        return type_text in INT_TYPES | FLOAT_TYPES, ""
    if kind == "bool":
        return type_text in INT_TYPES | FLOAT_TYPES | {"bool"}, ""
    if kind == "float":
        return type_text in FLOAT_TYPES, ""
    if kind == "str":
        return type_text in ("str", "os.PathLike", "PathLike"), ""
    if kind in ("bytes", "bytearray", "memoryview"):
        return type_text in BUFFER_TYPES or (kind == "bytes" and type_text in ("bytes", "str")), ""
    if kind in ("list", "tuple"):
        return _sequence_converts(arg, type_text)
    if kind == "ndarray":
        accepted = BUFFER_TYPES | {"numpy.ndarray", "numpy.typing.NDArray", "Weights", "array"}
        return type_text in accepted or _sequence_item(type_text) is not None, ""
    if kind == "enum":
        return _enum_converts(arg, type_text, surface)
    if kind == "object":
        if type_text in VOID_POINTERS:
            return _bound_instance(arg, surface), ""
        return _object_converts(arg, type_text, surface)
    return False, ""


def _bound_instance(arg: Mapping[str, Any], surface: Surface) -> bool:
    """Whether the object is an instance of a class of the bindings (a fake of one, or a subclass)."""
    return any(
        surface.lookup(name) is not None for name in arg.get("fake_mro", []) if not name.startswith("_")
    )


def _sequence_converts(arg: Mapping[str, Any], type_text: str) -> Tuple[bool, str]:
    items = set(arg.get("items", []))
    kind = arg.get("type")
    item_type = _sequence_item(type_text)
    if item_type is not None:
        if not items or item_type in ANY_TYPES:
            return True, ""
        if item_type in INT_TYPES:
            return items <= {"int", "bool"}, ""
        if item_type in FLOAT_TYPES:
            return items <= {"int", "float", "bool"}, ""
        if item_type == "bool":
            return items <= {"bool", "int"}, ""
        if item_type == "str":
            return items <= {"str", "bytes"}, ""
        if item_type in DIMS_TYPES:
            return items <= {"list", "tuple"}, ""
        if items <= {"object", "enum"}:
            return True, f"the elements' classes are not checked against {item_type}"
        return False, ""
    if type_text in DIMS_TYPES or type_text.startswith(("Tuple[", "typing.Tuple[")):
        return items <= {"int", "bool"}, ""
    if type_text in ("tuple", "list"):
        return kind == type_text, ""
    return type_text in BARE_SEQUENCES, ""


def _enum_converts(arg: Mapping[str, Any], type_text: str, surface: Surface) -> Tuple[bool, str]:
    enum_class = str(arg.get("class"))
    if type_text.rsplit(".", maxsplit=1)[-1] != enum_class:
        return False, ""
    entry = surface.lookup(type_text)
    if entry is None or entry.get("kind") != "enum":
        return False, f"{type_text} is not an enum of TensorRT {surface.version}"
    if arg.get("member") not in entry.get("members", {}):
        return False, f"{type_text} has no member {arg.get('member')} in TensorRT {surface.version}"
    return True, ""


def _object_converts(arg: Mapping[str, Any], type_text: str, surface: Surface) -> Tuple[bool, str]:
    wanted = type_text.rsplit(".", maxsplit=1)[-1]
    class_name = str(arg.get("class"))
    fake_mro = [str(name) for name in arg.get("fake_mro", [])]
    if not fake_mro:
        return False, ""
    if all(name.startswith("_") for name in fake_mro):
        return True, f"{class_name} is a private fake class: not checked against {type_text}"
    accepted = set()
    for name in fake_mro:
        accepted.update(surface.ancestors(name))
    return wanted in accepted, ""


def match_overload(
    params: Sequence[Param],
    positional: Sequence[Mapping[str, Any]],
    keywords: Mapping[str, Mapping[str, Any]],
    surface: Surface,
) -> Tuple[bool, List[str], List[str]]:
    """Whether a call with these argument types matches one overload: ``(ok, problems, notes)``."""
    plain = [p for p in params if not p.star]
    var_positional = any(p.star == "*" for p in params)
    var_keyword = any(p.star == "**" for p in params)
    problems: List[str] = []
    notes: List[str] = []
    if len(positional) > len(plain) and not var_positional:
        problems.append(f"{len(positional)} positional arguments, the signature takes {len(plain)}")
        return False, problems, notes
    supplied = set()
    for param, arg in zip(plain, positional):
        supplied.add(param.name)
        ok, note = converts(arg, param, surface)
        _collect(
            ok,
            note,
            f"{param.name}: {describe_arg(arg)} does not convert to {param.type or '?'}",
            problems,
            notes,
        )
    by_name = {p.name: p for p in plain}
    for name, arg in keywords.items():
        param = by_name.get(name)
        if param is None or is_unnamed(name):
            if not var_keyword:
                problems.append(f"no parameter named {name!r}")
            continue
        if name in supplied:
            problems.append(f"{name!r} given twice")
            continue
        supplied.add(name)
        ok, note = converts(arg, param, surface)
        _collect(
            ok, note, f"{name}: {describe_arg(arg)} does not convert to {param.type or '?'}", problems, notes
        )
    missing = [p.name for p in plain if p.name not in supplied and p.default is None]
    if missing:
        problems.append(f"missing required {', '.join(missing)}")
    return not problems, problems, notes


def _collect(ok: bool, note: str, problem: str, problems: List[str], notes: List[str]) -> None:
    """Keep a failed conversion as a problem (with its note), a note of a passed one as a note."""
    if not ok:
        problems.append(f"{problem} ({note})" if note else problem)
    elif note:
        notes.append(note)


def fake_params_accepted(fake: Sequence[str], real: Sequence[Param]) -> Tuple[bool, str]:
    """Whether a fake method's parameter names (``self`` dropped) fit one real overload.

    The names must match in order (pybind11's unnamed ``argN`` matches any name) and the fake may
    omit only trailing parameters that have defaults in the real overload.
    """
    plain = [p for p in real if not p.star]
    if len(fake) > len(plain):
        extra = ", ".join(fake[len(plain) :])
        return False, f"the fake has parameter(s) {extra} beyond the real {len(plain)}"
    for name, param in zip(fake, plain):
        if name != param.name and not is_unnamed(param.name):
            return False, f"parameter {name!r} is {param.name!r} in the real signature"
    omitted = [p.name for p in plain[len(fake) :] if p.default is None]
    if omitted:
        return False, f"the fake lacks required parameter(s) {', '.join(omitted)}"
    return True, ""
