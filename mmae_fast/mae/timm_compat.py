"""Import timm (and so torchvision) on a CPU-only torch: the one place for the workaround.

Some installs pair a CPU build of torch with a CUDA build of torchvision (what ``pip install
timm`` picks by default). Importing that torchvision fails with ``operator torchvision::nms does
not exist``: its Python side registers fake kernels for C++ ops whose schemas its CUDA library
could not define. Defining the two missing schemas (``torchvision::nms``, ``torchvision::qnms``)
before the import lets torchvision, and so timm, import; the ViT building blocks never call
them. On a matching torch/torchvision pair the first import just works and nothing is defined.

Every trainer module imports timm as ``from ._timm_compat import timm``.
"""
from __future__ import annotations

import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, int zero_point) -> Tensor",
)
_LIBRARY = None  # keeps the schema definitions alive for the life of the process


def _forget_torchvision() -> None:
    """Drop a half-imported torchvision from sys.modules so it can be imported again."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _import_torchvision() -> None:
    global _LIBRARY
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    _forget_torchvision()
    _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema only
    for schema in _SCHEMAS:
        _LIBRARY.define(schema)
    import torchvision  # noqa: F401,F811


_import_torchvision()

import timm  # noqa: E402
import timm.layers  # noqa: E402,F401
import timm.models.vision_transformer  # noqa: E402,F401

__all__ = ["timm"]
