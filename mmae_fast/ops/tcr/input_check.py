"""What the kernel backends (cuda, triton) share besides the plan: the input contract check.

``input_reason(z, backend, dtypes, ...)`` is the body of a backend's ``supports(z)``: None when
``z`` is a non-empty (m, d) tensor of one of ``dtypes`` on a device the backend runs on, else a
one-line reason naming the fix. The triton ops also raise it as a ValueError when called directly.
"""
from __future__ import annotations

import torch


def _names(dtypes) -> str:
    names = [str(t).removeprefix("torch.") for t in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def input_reason(z: torch.Tensor, backend: str, dtypes, *, cpu_ok: bool = False,
                 cpu_hint: str = "", dtype_hint: str = "") -> str | None:
    """None if ``z`` suits a kernel backend, else why not.

    cpu_ok: CPU tensors are accepted too (Triton's interpreter); cpu_hint / dtype_hint: text
    appended to the device / dtype reasons (how to get a supported input).
    """
    if not isinstance(z, torch.Tensor):
        return f"the {backend} backend needs a torch.Tensor, got {type(z).__name__}"
    if z.device.type != "cuda" and not (cpu_ok and z.device.type == "cpu"):
        return (f"the {backend} backend needs a CUDA tensor{cpu_hint}, "
                f"got device {z.device.type!r}")
    if z.dtype not in dtypes:
        return f"the {backend} backend takes {_names(dtypes)}, got {z.dtype}{dtype_hint}"
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        return (f"the {backend} backend needs a non-empty (m, d) matrix, "
                f"got shape {tuple(z.shape)}")
    return None
