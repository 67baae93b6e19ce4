"""The staged TCR op ``R = -logdet(I + mu/d · ZᵀZ)``, in data-flow order (docs/architecture.md);
U-MAE's uniformity ``||ZᵀZ||_F²/M²`` runs on the same stages (``uniformity``):

    op.py            the entry point ``tcr`` and the autograd op: stage 1 (+ the all-reduce with a
                     group), stage 2, and stage 3 in the backward
    stages.py        the stage contract (stages 1 and 3) in plain PyTorch: the "reference"
                     backend, and at float64 the oracle the kernels are tested against
    small_side.py    stage 2, the n×n side (float64; exact, Taylor, series) as one custom op
    graph_cache.py   the CUDA graphs that replay stage 2, keyed by its arguments
    registry.py      the backend modules by name (``mmae_fast.backends`` chooses among them)
    input_check.py   the input contract of the kernel backends
    triton/          the Triton backend: kernels, launchers, custom-op registration
    cuda.py          the CUDA backend: the Python side of ``csrc/``
    cpu.py           the CPU backend ("auto" on CPU tensors): stages 1 and 3 in few passes
    cpu_native.py    its native ops (``csrc/cpu/``): stages 1, 3 and the exact small side in eager
"""
from .op import tcr, uniformity

__all__ = ["tcr", "uniformity"]
