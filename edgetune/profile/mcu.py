"""Microcontroller memory plan: the activation arena a TFLite Micro-style planner needs, and
flash for the model, checked against a target's SRAM and flash.

Every activation tensor lives from the op that writes it to the last op that reads it. Like
TFLite Micro's GreedyMemoryPlanner (tensorflow/lite/micro/memory_planner/
greedy_memory_planner.h), tensors are placed largest first, each at the lowest offset where it
overlaps no already-placed tensor that is alive at the same time; the arena is the highest end.
The planner's per-op scratch buffers (im2col and the like, which depend on the kernels built
into the firmware) and the interpreter's own bookkeeping are not counted: the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetune.profile.ops import OpList, TensorLife
from edgetune.targets import Target

MiB = 2**20


@dataclass(frozen=True)
class Placement:
    tensor: TensorLife
    offset: int


def _overlap(a: TensorLife, b: TensorLife) -> bool:
    return a.first <= b.last and b.first <= a.last


def plan_arena(tensors: list[TensorLife]) -> list[Placement]:
    placed: list[Placement] = []
    for tensor in sorted(tensors, key=lambda t: (-t.bytes, t.first, t.name)):
        live = sorted((p for p in placed if _overlap(p.tensor, tensor)), key=lambda p: p.offset)
        offset = 0
        for other in live:
            if offset + tensor.bytes <= other.offset:
                break
            offset = max(offset, other.offset + other.tensor.bytes)
        placed.append(Placement(tensor, offset))
    return placed


def memory_plan(ops: OpList, model_bytes: int, target: Target) -> dict[str, Any]:
    if ops.format != "tflite":
        raise ValueError("the MCU memory plan reads TFLite models")
    placements = plan_arena(ops.tensors)
    arena = max((p.offset + p.tensor.bytes for p in placements), default=0)
    largest = sorted(ops.tensors, key=lambda t: -t.bytes)[:3]
    sram, flash = int(target.ram_mb * MiB), int(target.flash_mb * MiB)
    fits_sram = arena <= sram if sram else None  # 0 in a profile: unknown capacity
    fits_flash = model_bytes <= flash if flash else None
    return {
        "kind": "planned",
        "device_class": target.device_class,
        "arena_bytes": arena,
        "arena_without_reuse_bytes": sum(t.bytes for t in ops.tensors),
        "flash_bytes": model_bytes,
        "weights_bytes": ops.weights_bytes,
        "sram_bytes": sram,
        "flash_capacity_bytes": flash,
        "fits_sram": fits_sram,
        "fits_flash": fits_flash,
        "fits": None if fits_sram is None or fits_flash is None else fits_sram and fits_flash,
        "largest_tensors": [{"tensor": t.name, "bytes": t.bytes, "alive_ops": [max(t.first, 0), t.last]} for t in largest],
        "not_counted": "kernel scratch buffers and the interpreter's own allocations",
    }
