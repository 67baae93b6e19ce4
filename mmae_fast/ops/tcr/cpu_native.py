"""The "cpu" backend's native stages: the C++ ops of ``mmae_fast._cpu`` (csrc/cpu/tcr_cpu.cpp),
built by ``pip install`` wherever a C++ compiler is (optional: without them the Python stages of
``cpu.py`` run). They compute what the Python stages compute, in one pass per row loop instead of
one aten op per elementwise step — at small shapes the CPU's cost is the op count::

    torch.ops.mmae_fast.cpu_gram(h, feature, eps) -> (G, rinv)        cpu.gram (stages.py)
    torch.ops.mmae_fast.cpu_grad(coef, h, rinv, q, v, feature, scale, eps) -> dh    cpu.grad
    torch.ops.mmae_fast.cpu_exact_side(g, c, need_grad) -> (R, Q, qinfo)
        stage 2 of "exact" without centring or a group, where ``small_side`` takes LAPACK's
        float64 inverse (``cpu.exact_derivative``'s potri branch); v is then empty

They run in plain eager mode only (``plain_eager``: torch.compile and dispatch modes see the
Python stages); ``MMAE_FAST_CPU_NATIVE=0`` turns them off (benchmarks, tests of the fallback).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import torch

#: Environment switch: MMAE_FAST_CPU_NATIVE=0 runs the Python stages of the cpu backend.
NATIVE_ENV = "MMAE_FAST_CPU_NATIVE"

def _load() -> str | None:
    """Import ``mmae_fast._cpu`` from this package's own folder (which registers the
    ``torch.ops.mmae_fast.cpu_*`` ops); None, or why it is not available. The file is looked
    up beside ``mmae_fast/__init__.py`` so that a copy of the package never loads another
    checkout's build (an editable install's finder would)."""
    folder = Path(__file__).resolve().parents[2]
    files = [folder / f"_cpu{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        return (f"the CPU extension mmae_fast._cpu is not built (no _cpu extension file in "
                f"{folder}); build it with pip install --no-build-isolation . (a C++ compiler "
                f"is needed)")
    try:
        spec = importlib.util.spec_from_file_location("mmae_fast._cpu", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:
        return f"the CPU extension {path} does not load ({exc}); rebuild it with pip install"
    sys.modules.setdefault("mmae_fast._cpu", module)
    return None


REASON = _load()

#: the depth of the active dispatch-mode stack (a private torch API: without it, never native)
_DISPATCH_DEPTH = getattr(torch._C, "_len_torch_dispatch_stack", None)


def plain_eager() -> bool:
    """True outside torch.compile's tracing and outside every dispatch mode (fake tensors,
    export, an op recorder)."""
    return (_DISPATCH_DEPTH is not None and not torch.compiler.is_compiling()
            and not _DISPATCH_DEPTH())


def enabled() -> bool:
    """Whether the native ops are built and not switched off (``NATIVE_ENV``)."""
    return REASON is None and os.environ.get(NATIVE_ENV, "1") != "0"


def usable() -> bool:
    """``enabled()`` in plain eager mode: the cpu backend's stages call the native ops."""
    return enabled() and plain_eager()


if REASON is None:
    @torch.library.register_fake("mmae_fast::cpu_gram")
    def _gram_fake(h, feature, eps):
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        n = h.shape[1] if feature else h.shape[0]
        return h.new_empty((n, n), dtype=acc), h.new_empty((h.shape[0],), dtype=acc)

    @torch.library.register_fake("mmae_fast::cpu_grad")
    def _grad_fake(coef, h, rinv, q, v, feature, scale, eps):
        return torch.empty_like(h, memory_format=torch.contiguous_format)

    @torch.library.register_fake("mmae_fast::cpu_exact_side")
    def _exact_side_fake(g, c, need_grad):
        n = g.shape[0] if need_grad else 0
        return g.new_empty(()), g.new_empty((n, n)), g.new_empty((2,))
