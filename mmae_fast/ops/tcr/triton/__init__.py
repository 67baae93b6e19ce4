"""Triton kernels of the staged TCR op's stages 1 and 3 (docs/triton.md; the contract:
``mmae_fast/ops/tcr/stages.py``).

backend.py (the backend module), custom_ops.py (the torch.library ops and their fakes),
gram_kernel.py (row norms and the uncentred Gram on one side), grad_kernel.py (dh through the
Gram and the normalisation, split3 products for half inputs), tiles.py (shared tile helpers),
small_kernel.py (the small side's n×n tf32x3 product with its epilogue and traces),
config.py (block sizes), compile_check.py (compile every launch for a GPU target, no GPU
needed), stage_bench.py (GPU timings). On a machine without a GPU the kernels run in Triton's
interpreter, which must be switched on (``TRITON_INTERPRET=1``) before this package is imported.
"""
