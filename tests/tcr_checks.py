"""Checks of ``tcr_loss`` on the staged op shared by the backend tests (tests/ops/test_cpu_backend.py,
tests/ops/test_small_products.py): the oracle of each estimator's value and gradient at its
degree, no host synchronisation with one small-side op call, and the fullgraph compile."""
import torch

import mmae_fast as mf
from mmae_fast import reference, series
from tests import independent as ind
from tests.op_names import OpNames
from tests.tolerances import rel_err


def value_oracle(h, mu, centering, estimator, degree):
    """R of ``estimator`` at ``degree`` from eigenvalues (tests/independent.py)."""
    if estimator == "exact":
        return ind.tcr_exact(h, mu, centering)
    if estimator == "taylor":
        return ind.tcr_taylor(h, mu, degree, centering)
    return ind.tcr_series(h, mu, degree, centering)


def grad_oracle(h, mu, centering, estimator, degree):
    """dR/dh (float64): the closed form for exact; the float64 reference's autograd of the same
    polynomial for series and Taylor (its value is checked against eigenvalues above)."""
    if estimator == "exact":
        return torch.from_numpy(ind.tcr_exact_grad(h, mu, centering))
    x = h.detach().double().requires_grad_(True)
    reference.tcr(x, mu, centering=centering, estimator=estimator, degree=degree).backward()
    return x.grad


def assert_no_host_sync(h, estimator, mu=0.5, centering=True):
    """Forward + backward of ``tcr_loss(h)`` (backend "auto") read no device value on the host,
    and the small side runs as one op call (after a first call that warms the caches)."""
    h = h.detach().requires_grad_(True)
    mf.tcr_loss(h, mu, centering=centering, estimator=estimator).backward()
    with OpNames() as ops:
        mf.tcr_loss(h, mu, centering=centering, estimator=estimator).backward()
    assert not [n for n in ops.names if "_local_scalar_dense" in n or "item" in n]
    assert sum("mmae_fast.small_side" in n for n in ops.names) == 1


def assert_compiles_fullgraph(h, estimator, vtol, gtol, mu=2.0, centering=True):
    """``torch.compile(tcr_loss, fullgraph=True)`` (aot_eager) on h: value within vtol
    (relative) and gradient within gtol (``rel_err``) of the oracle."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x: mf.tcr_loss(x, mu, centering=centering, estimator=estimator),
                       fullgraph=True, backend="aot_eager")
    x = h.detach().clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    degree = reference.default_degree(estimator, series.kappa(mu, *h.shape))
    expected = value_oracle(h, mu, centering, estimator, degree)
    assert abs(value.item() - expected) <= vtol * abs(expected)
    assert rel_err(x.grad, grad_oracle(h, mu, centering, estimator, degree)) <= gtol
