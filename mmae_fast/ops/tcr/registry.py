"""The modules that implement the stages of the TCR op, by backend name (the contract they
implement: ``stages.py``). ``mmae_fast.backends`` chooses among them; ``op.py`` looks its backend
up here."""
from __future__ import annotations

import importlib
from types import ModuleType

#: backend name -> module implementing ``availability``, ``supports``, ``gram`` and ``grad``.
BACKEND_MODULES = {
    "reference": "mmae_fast.ops.tcr.stages",
    "triton": "mmae_fast.ops.tcr.triton.backend",
    "cuda": "mmae_fast.ops.tcr.cuda",
    "cpu": "mmae_fast.ops.tcr.cpu",
}


def import_backend(name: str) -> ModuleType | str:
    """Import a backend module, or return why it cannot be imported."""
    try:
        return importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:  # a backend whose code or dependency is missing
        return f"backend {name!r} cannot be imported ({exc})"


#: Every backend is imported once, with this module: ``torch.compile`` cannot trace an import,
#: and a compiled step must resolve its backend by a dict lookup (no graph break).
MODULES = {name: import_backend(name) for name in BACKEND_MODULES}
