"""Compile the staged ops' kernels for a GPU target without a GPU (a check for CI).

    python -m mmae_fast.ops.tcr.triton.compile_check [--arch 90] [--quick]

The interpreter never compiles a kernel, so errors of the GPU path (tl.dot operand shapes and
dtypes, layouts, shared memory) stay hidden on a CPU machine. This module runs the real launch
code of the staged ops (``gram_kernel.gram``, ``grad_kernel.grad``, block sizes from
``config.choose_stage`` / ``choose_grad``) and of the small side's tf32x3 product
(``small_kernel.product``, block sizes from ``small_kernel.choose``) on CPU tensors with
every kernel launch *recorded* instead of run, then compiles each distinct launch (kernel,
argument types, constexprs, num_warps, num_stages) with ``triton.compile`` for
``GPUTarget("cuda", arch, 32)``: Triton IR -> PTX -> cubin with Triton's bundled ptxas, no driver.
The recorded values are garbage (nothing runs), so only compilation is checked, not results —
and that every half-input product compiled to tensor-core instructions (``wgmma`` /
``mma.sync`` / ``tcgen05.mma``), and every TF32 product (``input_precision`` "tf32" / "tf32x3")
to TF32 ones (tf32x3: at least three, its hi·hi, hi·lo and lo·hi products); each variant of
the small-side product is printed with the instruction found and how often it occurs.

Needs ``TRITON_INTERPRET`` unset (the kernels must be real ``JITFunction``s).
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import os
import sys
import time

import torch

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` appends to ``launches``."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def _signature(fn, args, kwargs):
    """``(signature, constexprs, options)`` for ``triton.compile`` from one recorded launch."""
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = inspect.signature(fn.fn).bind(*args, **kwargs).arguments
    const_names = {p.name for p in fn.params if p.is_constexpr}
    sig, consts = {}, {}
    for name in fn.arg_names:
        value = bound[name]
        if name in const_names:
            sig[name], consts[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + DTYPE_NAMES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={value!r}")
    return sig, consts, options


def record_launches(cases, small=()) -> list:
    """Run the staged ops' launch code (``gram_kernel.gram``, ``grad_kernel.grad``) for every
    ``(m, d, dtype, feature, has_v)`` case and ``small_kernel.product`` for every ``(n, kwargs)``
    of ``small`` with the kernels replaced by recorders; return the launches."""
    import triton.runtime.jit as jit

    from .... import reference
    from . import grad_kernel as stage_grad, gram_kernel as stage_gram, small_kernel
    from .config import choose_grad, choose_stage

    launches: list = []
    saved = {}
    for mod in (stage_gram, stage_grad, small_kernel):
        for name, obj in vars(mod).items():
            if isinstance(obj, jit.JITFunction):
                saved[(mod, name)] = obj
                setattr(mod, name, _Recorder(obj, launches))
    if not saved:
        raise RuntimeError("no JITFunction found: unset TRITON_INTERPRET before importing "
                           "mmae_fast")
    try:
        for m, d, dtype, feature, has_v in cases:
            h = torch.zeros(m, d, dtype=dtype)
            n = d if feature else m
            stage_gram.gram(h, feature, reference.EPS, choose_stage(dtype, n))
            q = torch.zeros(n, n)
            v = torch.zeros(d if has_v else 0)
            for coef in (torch.ones(2), torch.ones(())):  # [s, t] (the staged op), [s]
                stage_grad.grad(coef, h, torch.ones(m), q, v, feature, 1.0, reference.EPS,
                                choose_grad(dtype, m, d))
        for n, kwargs in small:
            a = torch.zeros(n, n)
            extra = {k: (a if v == "matrix" else v) for k, v in kwargs.items()}
            small_kernel.product(a, torch.zeros(n, n), **extra)
    finally:
        for (mod, name), obj in saved.items():
            setattr(mod, name, obj)
    return launches


def cases(quick: bool):
    """Both Gram sides on odd shapes with m > d and m < d, every dtype, v on/off, and half
    inputs with m·d >= 2**24 (``choose_grad``'s 128 x 128 tiles); quick: two cases."""
    if quick:
        return [(37, 21, torch.float16, True, True),
                (21, 37, torch.bfloat16, False, False)]
    out = [(m, d, dt, feature, v)
           for (m, d), dt, feature, v in itertools.product(
               [(37, 21), (21, 37)], DTYPE_NAMES, (True, False), (False, True))]
    halves = (torch.float16, torch.bfloat16)
    out += [(4100, 4099, dt, True, v) for dt in halves for v in (False, True)]
    out += [(4099, 4100, dt, False, v) for dt in halves for v in (False, True)]
    return out


#: The small side's product: n (both tile sizes of ``small_kernel.choose``) x the epilogues
#: of its algorithms ("matrix": an (n, n) operand): plain, the Chebyshev recurrence
#: ``2·M·T - T'``, the Newton–Schulz step ``2I - A·X``, C with both reductions, the trace alone,
#: and the symmetric mode (``symmetric_mm``, the small side's product) plain and with both.
SMALL_EPILOGUES = (
    {},
    {"alpha": 2.0, "c": "matrix", "beta": -1.0},
    {"alpha": -1.0, "gamma": 2.0},
    {"alpha": 2.0, "c": "matrix", "beta": -1.0, "gamma": 0.5, "frob": "matrix", "trace": True},
    {"trace": True},
    {"symmetric": True},
    {"alpha": 2.0, "c": "matrix", "beta": -1.0, "frob": "matrix", "trace": True,
     "symmetric": True},
)


def small_cases(quick: bool):
    """``(n, product kwargs)`` of ``small_kernel.product``: odd n on 32- and 64-wide tiles with
    every epilogue; quick: one case with all of C, gamma and both reductions."""
    if quick:
        return [(101, SMALL_EPILOGUES[3])]
    return [(n, kw) for n in (101, 255, 1023) for kw in SMALL_EPILOGUES]


#: PTX instructions of tensor-core products: Hopper's warpgroup MMA, the warp-level mma.sync
#: (sm_80, and small tiles on sm_90), Blackwell's tcgen05.
MMA_INSTRUCTIONS = ("wgmma.mma_async", "mma.sync", "tcgen05.mma")


#: Fewest TF32 tensor-core instructions of a product by ``input_precision``.
TF32_PRODUCTS = {"tf32": 1, "tf32x3": 3}


def tf32_instructions(ptx: str) -> dict:
    """``{instruction: count}`` of the PTX lines holding a tensor-core instruction on TF32
    operands (e.g. ``wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32``)."""
    found: dict = {}
    for line in ptx.splitlines():
        for ins in MMA_INSTRUCTIONS:
            if ins in line and ".tf32" in line:
                found[ins] = found.get(ins, 0) + 1
    return found


def check_tensor_cores(name: str, sig: dict, consts: dict, ptx: str, arch: int):
    """Half-input products (the Gram and backward kernels with ``HALF_DOT``) must compile to
    tensor-core instructions, and TF32 products (``PREC`` "tf32" / "tf32x3") to at least
    ``TF32_PRODUCTS[PREC]`` TF32 tensor-core instructions: a RuntimeError naming the kernel
    otherwise. Returns the TF32 instructions found (``tf32_instructions``)."""
    half = any(t in ("*fp16", "*bf16") for t in sig.values())
    if half and consts.get("HALF_DOT") and not any(i in ptx for i in MMA_INSTRUCTIONS):
        raise RuntimeError(f"{name} {consts}: half inputs but no tensor-core instruction "
                           f"({', '.join(MMA_INSTRUCTIONS)}) in its PTX for sm_{arch} (the "
                           f"product would run on SIMT cores)")
    found = tf32_instructions(ptx)
    need = TF32_PRODUCTS.get(consts.get("PREC"), 0)
    if need and sum(found.values()) < need:
        raise RuntimeError(f"{name} {consts}: input_precision {consts['PREC']!r} needs >= {need} "
                           f"TF32 tensor-core instructions ({', '.join(MMA_INSTRUCTIONS)} on "
                           f".tf32), found {sum(found.values())} in its PTX for sm_{arch}")
    return found


def compile_all(launches, arch: int) -> int:
    """Compile each distinct launch for sm_<arch> (half products checked for tensor-core
    instructions); return how many were compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    seen = set()
    for fn, args, kwargs in launches:
        sig, consts, options = _signature(fn, args, dict(kwargs))
        key = (fn.__name__, tuple(sig.items()), tuple(consts.items()), tuple(options.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                    target=target, options=options)
        except Exception as exc:
            raise RuntimeError(f"{fn.__name__} {consts} {options} does not compile for "
                               f"sm_{arch}: {exc}") from exc
        found = check_tensor_cores(fn.__name__, sig, consts, kernel.asm["ptx"], arch)
        if fn.__name__ == "_product_kernel":
            flags = " ".join(f"{k}={v}" for k, v in consts.items())
            ins = ", ".join(f"{k} x{v}" for k, v in found.items())
            print(f"  small_kernel._product_kernel {flags} {options}: {ins} (tf32)")
    return len(seen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--quick", action="store_true", help="two cases only (for tests)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels", file=sys.stderr)
        return 2
    start = time.perf_counter()
    launches = record_launches(cases(args.quick), small_cases(args.quick))
    count = compile_all(launches, args.arch)
    print(f"compiled {count} kernel variants ({len(launches)} launches) for sm_{args.arch} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
