"""Backend registry and dispatch for the TCR regulariser.

A backend is a module that exposes:

    availability() -> str | None
        None when the backend can run in this process, else a one-line reason
        ("triton is not installed", "the CUDA extension mmae_fast._C was not built", ...).
    supports(z: Tensor) -> str | None
        None when this input (device, dtype, layout) is supported, else a one-line reason.
    gram(h, feature: bool, centering: bool) -> (G, rinv, colsum)
    grad(grad, h, rinv, q, v, feature: bool, scale: float) -> dh
        Stages 1 and 3 of the staged op (``mmae_fast.ops.staged``; the contract is stated in
        ``mmae_fast.ops.torch_stages`` and docs/staged.md). ``tcr_loss`` runs them around the
        shared small side; the "reference" backend runs ``reference.tcr`` directly for one
        process and its torch stages with ``group=`` or under ``torch.compile``.

``"auto"`` takes the first of ``AUTO_ORDER`` that is available and supports the input (kernel
backends only for CUDA tensors; CPU tensors always get "reference"); the
environment variable ``MMAE_FAST_BACKEND`` (a backend name) replaces what ``"auto"`` means.
An explicitly requested backend that cannot run raises ``RuntimeError``/``ValueError`` with the
reason; it never falls back silently.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

#: backend name -> module implementing the contract above.
BACKEND_MODULES = {
    "reference": "mmae_fast.ops.reference_backend",
    "triton": "mmae_fast.ops.triton_backend",
    "cuda": "mmae_fast.ops.cuda_backend",
}
AUTO_ORDER = ("cuda", "triton", "reference")
BACKENDS = tuple(BACKEND_MODULES) + ("auto",)
ENV_VAR = "MMAE_FAST_BACKEND"


def _import(name: str) -> ModuleType | str:
    """Import a backend module, or return why it cannot be imported."""
    try:
        return importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:  # a backend whose code or dependency is missing
        return f"backend {name!r} cannot be imported ({exc})"


#: Every backend is imported once, with this module: ``torch.compile`` cannot trace an import,
#: and a compiled step must resolve its backend by a dict lookup (no graph break).
_MODULES = {name: _import(name) for name in BACKEND_MODULES}


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
            if name != "reference" and z.device.type != "cuda":
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
