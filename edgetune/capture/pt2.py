"""Read a ``torch.export`` .pt2 archive without running anything it carries.

``torch.export.load`` is not safe for files from elsewhere (its own docstring says so). Beside
the graph (JSON) and raw tensor bytes, an archive can hold parts that run code when loaded:

- pickles: sample inputs (``data/sample_inputs/*.pt``), weights and constants marked
  ``use_pickle``, opaque and TorchBind objects, and the legacy ``*.pt`` weight files; a
  failed ``weights_only`` load falls back to full unpickling;
- compiled AOTInductor libraries (``data/aotinductor/``), which are loaded as shared objects;
- symbolic shape expressions, which go through ``sympy.sympify`` (it evaluates Python);
- node targets resolved by attribute lookup from ``torch`` (``torch.os.system`` resolves);
- ``guards_code``, Python source compiled into a guard function when the program is run.

This reader checks all of them first and refuses the archive, naming the part, unless every
part is plain data: tensors from raw bytes, sample inputs through ``torch.load(weights_only=True)``,
expressions made only of sympy constructors, literals and arithmetic, and targets under
``torch.ops``. Only then is the checked JSON handed to torch's deserializer.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import tokenize
import warnings
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import torch

from edgetune.errors import InputError

MAX_ARCHIVE_BYTES = 4 << 30  # uncompressed: a zip bomb is refused before it is inflated
_HINT = "export the model again with torch.export.save (plain tensors only), or pass it as a Python callable"

# torch.ops.<namespace>.<op>[.<overload>]: looked up in the operator registry, never imported.
_OP_TARGET = re.compile(r"^torch\.ops\.[A-Za-z][A-Za-z0-9_]*\._?[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)?$")  # aten._to_copy too
# Python's operator module, for arithmetic on symbolic sizes.
_OPERATOR_TARGETS = {
    f"_operator.{name}"
    for name in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt", "ge")
}
_EXPR_OPS = {"(", ")", ",", "=", "+", "-", "*", "/", "**", "//", "%"}
# Quoted symbol names and numbers only: no dots or dunders that could reach an attribute.
_EXPR_STRING = re.compile(r"^(['\"])([A-Za-z][A-Za-z0-9_]*|[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)\1$")
_BARE_NAMES = {"True", "False", "true", "false", "oo", "zoo", "nan", "pi", "E"}


class _Refused(Exception):
    """A part of the archive that would run code or cannot be read as plain data."""


def load_pt2(path: Path) -> torch.export.ExportedProgram:
    """The exported program in ``path``, or an InputError naming the part that was refused."""
    try:
        blob = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load(blob)
    except _Refused as exc:
        raise InputError(f"{path} was refused: {exc}, which could run code when loaded", _HINT) from None
    except InputError:
        raise
    except Exception as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(f"cannot load {path} as a torch.export program ({type(exc).__name__}: {text})", _HINT) from exc


def _load(blob: bytes) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive import _package as package
    from torch.export.pt2_archive import constants as names

    _check_members(blob, names)
    reader = package.PT2ArchiveReader(io.BytesIO(blob))
    if reader.read_string(names.ARCHIVE_VERSION_PATH) != names.ARCHIVE_VERSION_VALUE:
        raise ValueError("the archive version is not the one this torch reads")
    files = set(reader.get_file_names())
    _check_names(files, names)  # as torch's reader lists them, too: the two zip readers must agree
    model_file = names.MODELS_FILENAME_FORMAT.format("model")
    if model_file not in files:
        raise ValueError(f"the archive has no {model_file}")
    document = json.loads(reader.read_string(model_file))
    check_program_json(document)
    document["guards_code"] = []  # checks compiled from source when the program runs; not needed to read it
    program = _dict_to_dataclass(schema.ExportedProgram, document)
    for config_format in (names.WEIGHTS_CONFIG_FILENAME_FORMAT, names.CONSTANTS_CONFIG_FILENAME_FORMAT):
        config_file = config_format.format("model")
        if config_file in files:
            _check_payloads(json.loads(reader.read_string(config_file)), config_file, names)
    state_dict = package._load_state_dict(reader, "model")
    constants = package._load_constants(reader, "model")
    if isinstance(state_dict, bytes) or isinstance(constants, bytes):  # the legacy layout: a pickle for later
        raise _Refused("it holds pickled weights in the legacy layout")
    sample_inputs = _sample_inputs(reader, names.SAMPLE_INPUTS_FILENAME_FORMAT.format("model"), files)
    return ExportedProgramDeserializer(None).deserialize(program, state_dict, constants, sample_inputs)


def _check_members(blob: bytes, names: Any) -> None:
    """The archive's member names: nothing compiled, nothing in a legacy pickled layout."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise ValueError("not a zip archive") from None
    infos = archive.infolist()
    if sum(info.file_size for info in infos) > MAX_ARCHIVE_BYTES:
        raise _Refused(f"its members unpack to more than {MAX_ARCHIVE_BYTES >> 30} GiB")
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1:
        raise ValueError("the archive has no single root folder")
    root = roots.pop()
    _check_names({info.filename[len(root) + 1 :] for info in infos}, names)


def _check_names(members: set[str], names: Any) -> None:
    for member in members:
        if member.startswith((names.AOTINDUCTOR_DIR, names.EXECUTORCH_DIR, names.MTIA_DIR)):
            raise _Refused(f"it holds compiled code ({member})")
        if member.endswith(".pt") and not member.startswith(names.SAMPLE_INPUTS_DIR):
            raise _Refused(f"it holds pickled weights in the legacy layout ({member})")
        if member in ("serialized_state_dict.json", "serialized_exported_program.json"):
            raise _Refused("it uses the pre-2.8 archive layout, whose weights are pickled")


def _check_payloads(config: dict[str, Any], where: str, names: Any) -> None:
    entries = config.get("config")
    if not isinstance(entries, dict):
        raise ValueError(f"{where} has no config table")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: {fqn} is not a table")
        path_name = str(meta.get("path_name", ""))
        if path_name.startswith((names.CUSTOM_OBJ_FILENAME_PREFIX, names.OPAQUE_OBJ_FILENAME_PREFIX)):
            raise _Refused(f"its constant {fqn} is a pickled object")
        if meta.get("use_pickle"):
            raise _Refused(f"its tensor {fqn} is pickled")


def _sample_inputs(reader: Any, name: str, files: set[str]) -> tuple[Any, ...] | None:
    """The sample inputs through the ``weights_only`` unpickler: tensors and containers only."""
    if name not in files:
        return None
    data = reader.read_bytes(name)
    if not data:
        return None
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        raise _Refused("its sample inputs need the full unpickler") from None
    if not isinstance(value, tuple):
        raise _Refused("its sample inputs are not an (args, kwargs) pair")
    return value


def check_program_json(document: Any) -> None:
    """Every operator target and symbolic expression in the program's JSON, checked."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("target", "as_operator") and isinstance(value, str):
                    _check_target(value)
                elif key == "expr_str" and isinstance(value, str):
                    check_expression(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: str) -> None:
    if target in _OPERATOR_TARGETS:
        return
    if not _OP_TARGET.match(target) or "__" in target:
        raise _Refused(f"its graph calls {target[:80]!r}, which is not an operator under torch.ops")


def check_expression(text: str) -> None:
    """A sympy expression as ``srepr`` writes it: constructors, literals and arithmetic only.

    ``sympy.sympify`` evaluates its string as Python, so anything else (attribute access,
    indexing, other names) is refused before it gets there.
    """
    if len(text) > 10_000:
        raise _Refused("it holds a symbolic expression over 10,000 characters")
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in _SKIPPED_TOKENS]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        raise _Refused(f"its symbolic expression {text[:60]!r} does not parse") from None
    for index, token in enumerate(tokens):
        after = tokens[index + 1].string if index + 1 < len(tokens) else ""
        if token.type == tokenize.NUMBER or (token.type == tokenize.OP and token.string in _EXPR_OPS):
            continue
        if token.type == tokenize.STRING and _EXPR_STRING.match(token.string):
            continue
        if token.type == tokenize.NAME and _allowed_name(token.string, after):
            continue
        raise _Refused(f"its symbolic expression {text[:60]!r} holds {token.string[:30]!r}")


def _allowed_name(name: str, after: str) -> bool:
    if "__" in name:
        return False
    if after == "(":
        return name in _sympy_constructors()
    if after == "=":  # a keyword argument: Symbol('s0', integer=True)
        return name.islower() and not keyword.iskeyword(name)
    return name in _BARE_NAMES


_SKIPPED_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}


@cache
def _sympy_constructors() -> frozenset[str]:
    """Names of sympy expression classes, and of torch's own sympy functions."""
    import sympy
    import torch.utils._sympy.functions as torch_functions

    found = set()
    for module in (sympy, torch_functions):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, sympy.Basic) and not name.startswith("_"):
                found.add(name)
    return frozenset(found)
