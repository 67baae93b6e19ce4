"""Triton kernels of the TCR regulariser (docs/triton.md).

The staged ops (issue 13): stage_gram.py (row norms, column sums and the uncentred Gram on one
side), stage_grad.py (dh through the Gram and the normalisation, split3 products for half
inputs), tiles.py (shared tile helpers), config.py (block sizes), compile_check.py (compile every
launch for a GPU target, no GPU needed), stage_bench.py (GPU timings). The old monolithic path
(gram.py, traces.py, backward.py, tcr.py) serves ``tcr_loss`` until the staged layer replaces
it. On a machine without a GPU the kernels run in Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before this package is imported.
"""
