"""Triton kernels of the TCR regulariser (docs/triton.md).

gram.py (row norms, centring mean, normalised Gram on the smaller side -> B_1), traces.py
(polynomial recurrence with trace-identity epilogues), backward.py (dZ with the normalisation
Jacobian), tcr.py (the launch sequence), config.py (block sizes, dot precision),
compile_check.py (compile every launch for a GPU target, no GPU needed). On a machine without
a GPU the kernels run in Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before this package is imported.
"""
