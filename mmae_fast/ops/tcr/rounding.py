"""Tensor-core arithmetic emulated on the CPU: operands rounded to the tensor-core input format,
products accumulated in float32, so that the errors of a GPU product show on any machine.

Formats (explicit mantissa bits; the exponent range is not emulated — TF32 and bfloat16 have
float32's, float16 inputs here stay within its range)::

    float64  no rounding, float64 product          float32  float32 operands and product
    tf32     10 bits (A100/H100 TF32)              bf16     7 bits           fp16  10 bits
    tf32x3 / bf16x3   x = hi + lo, hi = round(x), lo = round(x - hi);
                      a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b (three products, lo·lo dropped)

``round_mantissa(x, bits)`` rounds to nearest, ties to even (``torch.round``), on the float64
mantissa from ``frexp``; ``product(a, b, fmt)`` is the (n, k) @ (k, p) product in one format.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: format -> explicit mantissa bits of the operands (None: the dtype's own)
MANTISSA_BITS = {"float64": None, "float32": None, "tf32": 10, "bf16": 7, "fp16": 10}
SPLIT_FORMATS = {"tf32x3": "tf32", "bf16x3": "bf16"}
FORMATS = tuple(MANTISSA_BITS) + tuple(SPLIT_FORMATS)
#: unit roundoff of each format's operands (half an ulp of 1)
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11,
                 "bf16": 2.0 ** -8, "fp16": 2.0 ** -11, "tf32x3": 2.0 ** -22, "bf16x3": 2.0 ** -16}


def round_mantissa(x: Tensor, bits: int) -> Tensor:
    """x rounded to ``bits`` explicit mantissa bits (nearest, ties to even), in x's dtype."""
    mantissa, exponent = torch.frexp(x.double())  # x = mantissa · 2^exponent, 0.5 <= |m| < 1
    scale = 2.0 ** (bits + 1)
    return torch.ldexp(torch.round(mantissa * scale) / scale, exponent).to(x.dtype)


def operand(x: Tensor, fmt: str) -> Tensor:
    """x as a product in format ``fmt`` reads it: float64, or float32 holding the rounded values."""
    if fmt == "float64":
        return x.double()
    bits = MANTISSA_BITS[fmt]
    x = x.float()
    return x if bits is None else round_mantissa(x, bits)


def product(a: Tensor, b: Tensor, fmt: str) -> Tensor:
    """``a @ b`` as a tensor-core product in ``fmt`` (float32 accumulation and output, float64
    for "float64")."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt in SPLIT_FORMATS:
        base = SPLIT_FORMATS[fmt]
        a_hi, b_hi = operand(a, base), operand(b, base)
        a_lo, b_lo = operand(a.float() - a_hi, base), operand(b.float() - b_hi, base)
        return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)
    return operand(a, fmt) @ operand(b, fmt)
