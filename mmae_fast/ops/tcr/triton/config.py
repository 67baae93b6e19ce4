"""Launch choices of the staged kernels: interpreter detection, block sizes, dot precision.

No autotuning: a small heuristic picks one configuration per dtype and size (autotune's
``do_bench`` needs a GPU, and the TCR shapes are few and known), from a sweep on an H100
(``python -m mmae_fast.ops.tcr.triton.stage_bench --sweep``; the timings: docs/triton.md).
"""
from __future__ import annotations

import dataclasses
import os

import torch


#: Input dtypes the kernels take (computed in float32; float64 goes to "cuda" / "reference").
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Tile sizes and dot settings of the staged ops (``gram_kernel``, ``grad_kernel``).

    block_n: square Gram tile, and dh's column block; block_k: contraction step; block_m: rows
    per program of the row-norm kernel and of dh; half_dot: dot operands in the input's half
    dtype (tensor cores, float32 accumulation); emulate_bf16: the interpreter with bfloat16
    input, whose tl.dot is wrong there and whose float32 -> bfloat16 cast truncates:
    operands are the same rounded values held in float32, rounded to nearest in float32
    arithmetic (``tiles.rne_bf16``); precision: ``input_precision`` of float32 dots ("ieee":
    float32 accuracy; tf32x3 was not measured against the float32 contract);
    num_warps / num_stages: GPU only.
    """
    block_n: int
    block_k: int
    block_m: int
    half_dot: bool
    emulate_bf16: bool
    precision: str
    num_warps: int
    num_stages: int


def choose_stage(dtype: torch.dtype, n: int) -> StageConfig:
    """Configuration of ``gram_kernel`` for an input of ``dtype`` whose Gram side is ``n``.

    Half inputs on a GPU: 128-wide tiles, 64-deep steps, 4 warps, the fastest of five
    configurations swept on an H100 (``stage_bench --sweep``; figures in docs/triton.md).
    """
    half = dtype in (torch.float16, torch.bfloat16)
    if interpreting():  # large blocks: the interpreter pays per program, not per element
        bf16 = dtype == torch.bfloat16
        return StageConfig(32, 32, 32, dtype == torch.float16, bf16, "ieee", 4, 1)
    if half:
        return StageConfig(128, 64, 64, True, False, "ieee", 4, 3)
    return StageConfig(64, 32, 64, False, False, "ieee", 4, 3)


#: Elements m·d from which ``choose_grad`` takes 128 x 128 tiles.
LARGE_GRAD = 1 << 24


def choose_grad(dtype: torch.dtype, m: int, d: int) -> StageConfig:
    """Configuration of ``grad_kernel`` (block_m x block_n tiles of dh, block_k deep steps).

    Half inputs on a GPU, the fastest of seven configurations swept on an H100 (bf16;
    ``stage_bench --sweep``, figures in docs/triton.md): 128 x 128 x 32 with 8 warps for
    m·d >= 2**24, else 64 x 64 x 64 with 4 warps.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    if interpreting():
        return choose_stage(dtype, min(m, d))
    if half and m * d >= LARGE_GRAD:
        return StageConfig(128, 32, 128, True, False, "ieee", 8, 3)
    if half:
        return StageConfig(64, 64, 64, True, False, "ieee", 4, 3)
    return StageConfig(64, 32, 64, False, False, "ieee", 4, 3)
