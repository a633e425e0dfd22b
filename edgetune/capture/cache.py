"""The capture cache: a module's captured graph kept on disk, so that the next compress of
the same model skips ``torch.export`` (about 2 s on a mobile network, most of it importing
and tracing).

An entry is found by a key that hashes everything the capture reads:

- the versions of edgetune, torch and Python, and the source of every module that is
  neither Python's nor an installed library's (the user's model code and edgetune's own
  lowerings, read when they change) together with the version of each installed package in
  use;
- the model: its printed structure, each submodule's class and own attributes (numbers,
  strings, tensors, functions by their code and closure; a model with an attribute the key
  cannot describe is not cached), and every parameter and buffer (name, dtype, shape, bytes);
- the input shape.

An entry holds the graph (safetensors, no pickle) and the versions it was written by, which
are checked again when it is read: an entry from another torch or edgetune version is never
used. The cache lives in ``$EDGETUNE_CAPTURE_CACHE``, else ``<edgetune cache>/capture``
(``$EDGETUNE_CACHE`` or ``~/.cache/edgetune``); ``EDGETUNE_CAPTURE_CACHE=off`` turns it off.
It keeps the most recently used entries up to :data:`LIMIT_BYTES`. A cache that cannot be
written or an entry that cannot be read is said once on stderr, and the capture runs as if
there were no cache.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import edgetune
from edgetune.ir.graph import Graph, Node, Tensor
from edgetune.ir.serialize import safetensors_bytes
from edgetune.timing import step

FORMAT = "edgetune.capture-cache"
VERSION = 1  # of the entry layout; a change makes every older entry a miss
LIMIT_BYTES = 1 << 30  # least recently used entries go beyond this
_said: set[str] = set()  # the problems already told on stderr, once per process


class Uncacheable(Exception):
    """The key cannot cover the model's code: it is captured every time."""


def cache_folder() -> Path | None:
    """Where entries go; None when the cache is off."""
    configured = os.environ.get("EDGETUNE_CAPTURE_CACHE", "")
    if configured.lower() in ("off", "0", "no", "false"):
        return None
    if configured:
        return Path(configured)
    from edgetune.artifacts import cache_dir

    return cache_dir() / "capture"


def cached_capture(
    model: nn.Module, shape: tuple[int, ...], capture: Callable[[], Graph], dtype: str = "float32", names: tuple[str, ...] = ()
) -> Graph:
    """``capture()``'s graph from the cache when an entry has the model's key, else captured
    now and stored."""
    folder = cache_folder()
    if folder is None:
        return capture()
    try:
        with step("capture cache key"):
            key = capture_key(model, shape, dtype, names)
    except Uncacheable:
        return capture()
    entry = folder / f"{key}.edgetune"
    if entry.is_file():
        with step("capture cache read"):
            graph = _read(entry)
        if graph is not None:
            return graph
    graph = capture()
    with step("capture cache write"):
        _write(folder, entry, graph)
    return graph


def versions() -> dict[str, str]:
    return {"edgetune": edgetune.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def capture_key(model: nn.Module, shape: tuple[int, ...], dtype: str = "float32", names: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    typed: dict[str, Any] = {"dtype": dtype} if dtype != "float32" else {}  # float inputs keep the keys they had
    if len(names) > 1:
        typed["inputs"] = list(names)
    digest.update(json.dumps({"format": FORMAT, "version": VERSION, **versions(), "shape": list(shape), **typed}).encode())
    _hash_code(digest, model)
    _hash_model(digest, model)
    return digest.hexdigest()[:40]


def _hash_code(digest: Any, model: nn.Module) -> None:
    """The source of the code a capture may run: edgetune's own files and every loaded module
    outside Python's library and the installed packages, whose versions stand for them where
    the model's classes come from. The running script (``__main__``, or multiprocessing's alias
    of it) counts only when it defines one of the model's classes, so that the key is the same
    from the CLI, ``python -m`` and the API; a class defined where no file holds it (a
    notebook) makes the model uncacheable."""
    digest.update(edgetune_source())
    paths = sysconfig.get_paths()
    installed = tuple(os.path.realpath(paths[name]) + os.sep for name in ("stdlib", "platstdlib", "purelib", "platlib"))
    outside: dict[str, bool] = {}  # top-level package -> installed (or Python's own)
    for name, module in sorted(sys.modules.items()):
        top = name.partition(".")[0]
        file = getattr(module, "__file__", None)
        if not file or top in ("__main__", "__mp_main__", "edgetune"):
            continue
        if top not in outside:
            outside[top] = os.path.realpath(getattr(sys.modules.get(top), "__file__", None) or file).startswith(installed)
        if not outside[top]:
            try:
                digest.update(name.encode() + b"\0" + Path(file).read_bytes() + b"\0")
            except OSError:
                digest.update(name.encode() + b"\0unreadable\0")
    modules = {type(m).__module__ for m in model.modules()}
    for name in sorted(modules & {"__main__", "__mp_main__"}):  # a model class defined in the running script
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file or not Path(file).is_file():
            raise Uncacheable(f"a class of the model is defined in {name}, which no file holds")
        digest.update(Path(file).read_bytes())
    tops = sorted({name.partition(".")[0] for name in modules} - {"edgetune", "__main__", "__mp_main__"})
    digest.update(json.dumps({top: str(getattr(sys.modules.get(top), "__version__", "")) for top in tops}).encode())


@functools.cache
def edgetune_source() -> bytes:
    """A digest of edgetune's own files, read once a process (a search captures every trial)."""
    package = Path(edgetune.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def _hash_model(digest: Any, model: nn.Module) -> None:
    """Structure, weights and every attribute forward() could read: each submodule's own
    attributes (numbers, strings, tensors, functions by their code) are described; one the
    key cannot describe (an open file, an object of the user's class) makes the model
    uncacheable rather than risk a stale graph."""
    digest.update(repr(model).encode())
    for name, module in model.named_modules():
        cls = type(module)
        own = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        digest.update(json.dumps([name, cls.__module__, cls.__qualname__]).encode())
        for key in sorted(own):
            digest.update(key.encode() + b"=")
            _describe(digest, own[key], 0)
    describe_tensors(digest, [*model.named_parameters(), *model.named_buffers()])


def describe_tensors(digest: Any, named: list[tuple[str, torch.Tensor]]) -> None:
    """Each tensor's name, dtype, shape and bytes."""
    for name, tensor in named:
        digest.update(name.encode())
        _describe(digest, tensor, 0)


def _describe(digest: Any, value: Any, depth: int) -> None:
    """Feed ``value`` to the digest by what it is, not by its id."""
    if depth > 8:
        raise Uncacheable("an attribute nests too deep to describe")
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum, torch.dtype, torch.device)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor:{value.dtype}:{list(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, np.ndarray):
        digest.update(f"array:{value.dtype}:{list(value.shape)};".encode() + np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        digest.update(f"{type(value).__name__}[{len(items)}];".encode())
        for item in items:
            _describe(digest, item, depth + 1)
    elif isinstance(value, dict):
        digest.update(f"dict[{len(value)}];".encode())
        for key, item in value.items():
            _describe(digest, key, depth + 1)
            _describe(digest, item, depth + 1)
    elif isinstance(value, weakref.ReferenceType):  # an RNN's references to its own weights
        _describe(digest, value(), depth + 1)
    elif isinstance(value, nn.Module):
        digest.update(f"module:{type(value).__module__}.{type(value).__qualname__}:{value!r};".encode())
    else:
        _describe_callable(digest, value, depth)


def _describe_callable(digest: Any, value: Any, depth: int) -> None:
    """A function by its code, defaults and closure; a partial by its parts; a builtin by name."""
    if isinstance(value, types.MethodType):
        _describe_callable(digest, value.__func__, depth + 1)
        _describe(digest, value.__self__ if isinstance(value.__self__, (nn.Module, type)) else None, depth + 1)
    elif isinstance(value, types.FunctionType):
        digest.update(f"function:{value.__module__}.{value.__qualname__};".encode())
        _describe_code(digest, value.__code__)
        _describe(digest, value.__defaults__, depth + 1)
        _describe(digest, [cell.cell_contents for cell in value.__closure__ or ()], depth + 1)
    elif isinstance(value, functools.partial):
        _describe_callable(digest, value.func, depth + 1)
        _describe(digest, [value.args, value.keywords], depth + 1)
    elif isinstance(value, (types.BuiltinFunctionType, type)):  # torch.relu, a class
        digest.update(f"named:{value.__module__}.{value.__qualname__};".encode())
    else:
        raise Uncacheable(f"an attribute of type {type(value).__name__}")


def _describe_code(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code + repr(code.co_names).encode())
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _describe_code(digest, constant)
        else:
            digest.update(repr(constant).encode())


def say(problem: str) -> None:
    """A cache problem on stderr, once a process."""
    if problem not in _said:
        _said.add(problem)
        print(f"note: {problem}", file=sys.stderr, flush=True)


def _write(folder: Path, entry: Path, graph: Graph) -> None:
    try:
        blob = graph_bytes(graph)
    except (TypeError, ValueError, KeyError):
        return  # a graph with an attribute the cache cannot store: captured each time
    store(folder, entry, blob)


def store(folder: Path, entry: Path, blob: bytes) -> None:
    """Write an entry whole or not at all (a reader never sees half of one), then keep the
    cache within its limit; a folder that cannot be written is said once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".partial-", delete=False) as handle:
            handle.write(blob)
        os.replace(handle.name, entry)
        _evict(folder, LIMIT_BYTES)
    except OSError as exc:
        say(f"the capture cache {folder} cannot be written ({exc.strerror}); compressing without it")


def _read(entry: Path) -> Graph | None:
    try:
        blob = entry.read_bytes()
        graph, written_by = graph_from_cache_bytes(blob)
    except OSError as exc:
        say(f"the capture cache entry {entry} cannot be read ({exc.strerror}); capturing again")
        return None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        say(f"the capture cache entry {entry} is damaged ({type(exc).__name__}); capturing again")
        return None
    if written_by != versions():
        return None  # another torch or edgetune (the key differs too; this is the second lock)
    mark_used(entry)
    return graph


def mark_used(entry: Path) -> None:
    """The entry becomes the most recently used (eviction goes by modification time)."""
    try:
        os.utime(entry)
    except OSError:
        pass


def _evict(folder: Path, limit: int) -> None:
    """Least recently used entries beyond ``limit``: captured graphs and the zoo's settled
    models (edgetune.zoo.settled) alike."""
    found = [*folder.glob("*.edgetune"), *folder.glob("zoo-*.safetensors")]
    entries = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in entries:
        total += path.stat().st_size
        if total > limit:
            path.unlink(missing_ok=True)


# The graph with its attributes' types kept (a tuple stays a tuple), unlike model.edgetune's JSON.


def graph_bytes(graph: Graph) -> bytes:
    arrays = {name: np.ascontiguousarray(t.data) for name, t in graph.tensors.items() if t.data is not None}
    if any(t.quant is not None or t.qdata is not None for t in graph.tensors.values()):
        raise ValueError("a captured graph has no quantization parameters")
    structure = {
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "nodes": [[n.op, n.name, n.inputs, n.outputs, _encode(n.attrs)] for n in graph.nodes],
        # a constant's own shape too: safetensors gives a 0-d array back with one dimension; an
        # integer input's type last
        "tensors": [
            [name, list(t.shape), None if t.data is None else list(t.data.shape), *([t.dtype] if t.is_integer else [])]
            for name, t in graph.tensors.items()
        ],
        "meta": _encode(graph.meta),
    }
    metadata = {"format": FORMAT, "version": str(VERSION), "written_by": json.dumps(versions()), "graph": json.dumps(structure)}
    return safetensors_bytes(arrays, metadata)


def graph_from_cache_bytes(blob: bytes) -> tuple[Graph, dict[str, str]]:
    from safetensors.numpy import load

    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    metadata = header["__metadata__"]
    if metadata.get("format") != FORMAT or metadata.get("version") != str(VERSION):
        raise ValueError("not a capture cache entry of this version")
    arrays = load(blob)
    structure = json.loads(metadata["graph"])
    tensors = {
        name: Tensor(name, tuple(shape), None if stored is None else arrays[name].reshape(stored), dtype=(*typed, "float32")[0])
        for name, shape, stored, *typed in structure["tensors"]
    }
    nodes = [Node(op, name, inputs, outputs, _decode(attrs)) for op, name, inputs, outputs, attrs in structure["nodes"]]
    graph = Graph(structure["inputs"], structure["outputs"], tensors, nodes, _decode(structure["meta"]))
    return graph, json.loads(metadata["written_by"])


def _encode(value: Any) -> Any:
    """JSON with tuples marked, so that they come back as tuples; anything else JSON cannot
    hold raises TypeError."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or "__tuple__" in value:
            raise TypeError("a mapping the cache cannot store")
        return {k: _encode(v) for k, v in value.items()}
    if value is None or type(value) in (bool, int, float, str):
        return value
    raise TypeError(f"a {type(value).__name__} attribute")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
