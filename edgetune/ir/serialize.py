"""Save and load a (quantized) graph as one safetensors file: tensors as tensors, the graph
structure and quantization parameters as JSON metadata. No pickle anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.errors import InputError
from edgetune.ir.graph import Graph, Node, QParams, Tensor

FORMAT = "edgetune.graph"
VERSION = 2  # 2: int16 activations and int64 biases (the 16x8 fallback); files without them stay 1


_DTYPES = {"float32": "F32", "float64": "F64", "int8": "I8", "uint8": "U8", "int32": "I32", "int64": "I64"}

# A constant whose int8 values differ from its float ones (see Tensor.qdata) is stored twice.
INT8_SUFFIX = "@int8"


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors layout, written deterministically (sorted names, sorted header keys).

    The reference library keeps metadata in a hash map, so its byte order varies between
    runs; artifacts must be byte-identical for identical inputs. Layout: 8-byte little-endian
    header length, a JSON header padded with spaces to 8 bytes, then the raw tensors.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[array.dtype.name], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def graph_to_bytes(graph: Graph) -> bytes:
    arrays = {name: np.ascontiguousarray(t.data) for name, t in graph.tensors.items() if t.data is not None}
    arrays.update({name + INT8_SUFFIX: np.ascontiguousarray(t.qdata) for name, t in graph.tensors.items() if t.qdata is not None})
    structure: dict[str, Any] = {
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs, "attrs": n.attrs} for n in graph.nodes],
        "tensors": {
            name: {
                "shape": list(t.shape),
                "const": t.data is not None,
                "quant": t.quant.to_dict() if t.quant else None,
                **({"dtype": t.dtype} if t.is_integer else {}),
            }
            for name, t in graph.tensors.items()
        },
        "meta": graph.meta,
    }
    wide = any(t.quant is not None and t.quant.dtype in ("int16", "int64") for t in graph.tensors.values())
    metadata = {"format": FORMAT, "version": str(VERSION if wide else 1), "graph": json.dumps(structure, sort_keys=True)}
    return safetensors_bytes(arrays, metadata)


def is_graph_file(path: str | Path) -> bool:
    """Whether ``path`` holds an edgetune graph (what compress writes as model.edgetune), by its
    header and whatever its name."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 2**26:
                return False
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and isinstance(header.get("__metadata__"), dict) and header["__metadata__"].get("format") == FORMAT


def graph_from_bytes(blob: bytes, source: str = "the file") -> Graph:
    from safetensors.numpy import load

    try:
        arrays = load(blob)
        metadata = _metadata(blob)
    except Exception as exc:
        raise InputError(
            f"{source} is not an edgetune compressed model ({type(exc).__name__})", "pass the model.edgetune file that compress wrote"
        ) from None
    if metadata.get("format") != FORMAT:
        raise InputError(f"{source} is not an edgetune compressed model", "pass the model.edgetune file that compress wrote")
    if int(metadata.get("version", 0)) > VERSION:
        raise InputError(f"{source} was written by a newer edgetune (format {metadata['version']})", "upgrade edgetune")
    try:
        return _graph(json.loads(metadata["graph"]), arrays)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise InputError(f"{source} is damaged: its graph does not parse ({type(exc).__name__})", "compress the model again") from exc


def _graph(structure: dict[str, Any], arrays: dict[str, np.ndarray]) -> Graph:
    tensors = {}
    for name, raw in structure["tensors"].items():
        quant = QParams.from_dict(raw["quant"]) if raw["quant"] else None
        data = arrays[name] if raw["const"] else None
        tensors[name] = Tensor(name, tuple(raw["shape"]), data, quant, arrays.get(name + INT8_SUFFIX), raw.get("dtype", "float32"))
    nodes = [Node(n["op"], n["name"], n["inputs"], n["outputs"], n["attrs"]) for n in structure["nodes"]]
    graph = Graph(structure["inputs"], structure["outputs"], tensors, nodes, structure.get("meta", {}))
    for name in [*graph.inputs, *graph.outputs, *(t for node in graph.nodes for t in (*node.inputs, *node.outputs) if t)]:
        if name not in graph.tensors:
            raise KeyError(name)
    return graph


def _metadata(blob: bytes) -> dict[str, str]:
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return dict(header.get("__metadata__", {}))


def load_graph(path: Path) -> Graph:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})", "check the path") from None
    return graph_from_bytes(blob, str(path))
