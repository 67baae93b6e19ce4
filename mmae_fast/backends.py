"""Backend choice for the TCR regulariser: which of the modules in
``mmae_fast.ops.tcr.registry`` runs an input.

A backend module exposes ``availability() -> str | None`` (None when it can run in this process,
else a one-line reason: "triton is not installed", "the CUDA extension mmae_fast._C was not
built", ...), ``supports(z) -> str | None`` (the same for one input: device, dtype, layout) and
stages 1 and 3 of the staged op, ``gram`` and ``grad``, whose contract is written in
``mmae_fast.ops.tcr.stages``. The "reference" backend runs ``reference.tcr`` directly for one
eager process and those stages with ``group=`` or under ``torch.compile``.

``"auto"`` takes the first of ``AUTO_ORDER`` that is available and supports the input (kernel
backends only for CUDA tensors; CPU tensors get "cpu": the staged op with CPU-tuned stages,
``mmae_fast.ops.tcr.cpu``; "reference" takes the rest); the
environment variable ``MMAE_FAST_BACKEND`` (a backend name) replaces what ``"auto"`` means.
An explicitly requested backend that cannot run raises ``RuntimeError``/``ValueError`` with the
reason; it never falls back silently.
"""
from __future__ import annotations

import os
from types import ModuleType

import torch

from .ops.tcr.registry import BACKEND_MODULES, MODULES

AUTO_ORDER = ("cuda", "triton", "cpu", "reference")
BACKENDS = tuple(BACKEND_MODULES) + ("auto",)
ENV_VAR = "MMAE_FAST_BACKEND"
_MODULES = MODULES


def _load(name: str) -> ModuleType | str:
    """The backend module, or why it cannot be imported."""
    return _MODULES[name]


def availability(name: str) -> str | None:
    """None if backend ``name`` can run in this process, else the reason."""
    mod = _load(name)
    return mod if isinstance(mod, str) else mod.availability()


def available_backends() -> list[str]:
    """Names of the backends usable in this process, in ``"auto"`` preference order."""
    return [name for name in AUTO_ORDER if availability(name) is None]


def resolve_name(backend: str, z: torch.Tensor) -> str:
    """The name of the backend ``resolve`` picks for ``z``."""
    mod = resolve(backend, z)
    return next(name for name, m in _MODULES.items() if m is mod)


def resolve(backend: str, z: torch.Tensor) -> ModuleType:
    """Return the backend module that will run ``z``; raise with the reason if it cannot."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced and forced != "auto":
            if forced not in BACKEND_MODULES:
                raise ValueError(
                    f"environment variable {ENV_VAR}={forced!r} is not a backend; "
                    f"use one of {tuple(BACKEND_MODULES)} or unset it")
            return resolve(forced, z)
        for name in AUTO_ORDER:
            if name in ("cuda", "triton") and z.device.type != "cuda":
                continue  # kernels on the CPU only run in Triton's interpreter: never automatic
            mod = _load(name)
            if not isinstance(mod, str) and mod.availability() is None and mod.supports(z) is None:
                return mod
        raise RuntimeError("no backend supports this input")  # unreachable: reference takes all
    mod = _load(backend)
    if isinstance(mod, str):
        raise RuntimeError(mod)
    reason = mod.availability()
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} is not available: {reason}; "
                           f"use backend='auto' or 'reference'")
    reason = mod.supports(z)
    if reason is not None:
        raise ValueError(f"backend {backend!r} does not support this input: {reason}")
    return mod
