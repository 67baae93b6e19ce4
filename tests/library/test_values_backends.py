"""Kernel backends: the value against the independent float64 formula, and proof that the
backend's own kernels ran (a fallback to the reference would give the right value too).

On the CPU the Triton kernels run in Triton's interpreter (tests/conftest.py), where every
``@triton.jit`` launch goes through ``InterpretedFunction.run``: counting those calls proves the
kernels executed. Kernel-specific tests: tests/ops/test_triton_backend.py, tests/ops/test_cuda_backend.py.
"""
import pytest
import torch

import independent as ind
import mmae_fast as mf
from mmae_fast import backends
from op_names import interpreter_launches
from tolerances import STAGED_BACKEND



@pytest.mark.parametrize("estimator,order,mu", [("exact", None, 3.0), ("series", 6, 3.0),
                                                ("taylor", 3, 0.3)])
@pytest.mark.parametrize("centering", [False, True])
def test_triton_kernels_run_and_give_the_independent_value(monkeypatch, estimator, order, mu,
                                                           centering):
    reason = backends.availability("triton")
    if reason is not None:
        pytest.skip(reason)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = backends._load("triton").supports(torch.ones(2, 2, device=device))
    if reason is not None:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(5)
    h = torch.randn(24, 16, generator=g) + 0.5 * torch.randn(1, 16, generator=g)
    launched = interpreter_launches(monkeypatch) if device == "cpu" else None
    x = h.to(device).requires_grad_()
    value = mf.tcr_loss(x, mu, centering=centering, estimator=estimator, order=order,
                        backend="triton")
    if launched is not None:
        # with centring, stage 1 is stages.centred_gram on every backend (the operand is
        # centred before the product); without, the forward is the Triton Gram
        assert bool(launched) != centering, "backend='triton': unexpected forward launches"
        forward = len(launched)
    value.backward()
    if launched is not None:
        assert len(launched) > forward, "backend='triton' launched no Triton kernel in the backward"
    if estimator == "exact":
        expected = ind.tcr_exact(h, mu, centering)
    elif estimator == "taylor":
        expected = ind.tcr_taylor(h, mu, order, centering)
    else:
        expected = mf.tcr_loss(h.double(), mu, centering=centering, estimator="series",
                               order=order).item()  # checked against eigenvalues in test_values_tcr
    assert value.item() == pytest.approx(expected, rel=STAGED_BACKEND[torch.float32][0])
    grad = torch.from_numpy(ind.tcr_exact_grad(h, mu, centering)) if estimator == "exact" else None
    if grad is not None:
        err = float((x.grad.double().cpu() - grad).norm() / grad.norm())
        assert err <= STAGED_BACKEND[torch.float32][1]
