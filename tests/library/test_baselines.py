"""The eager baselines compute the same R as the reference (float32 on the CPU)."""
import pytest
import torch

from mmae_fast import baselines
from mmae_fast import reference as R
from tolerances import assert_close


@pytest.mark.parametrize("m,d", [(13, 29), (37, 11)])
@pytest.mark.parametrize("name", ["official", "cholesky"])
def test_exact_baselines_match_reference(name, m, d, gen):
    z = torch.randn(m, d, generator=gen)
    got = baselines.BASELINES[name](z, 3.0)
    assert got.dtype == torch.float32
    assert_close(got, R.tcr(z.double(), 3.0), torch.float32)


def test_taylor_baseline_matches_reference_taylor(gen):
    z = torch.randn(23, 17, generator=gen)
    for order in (2, 4, 5):
        assert_close(baselines.taylor_tcr(z, 0.5, order=order),
                     R.tcr(z.double(), 0.5, estimator="taylor", degree=order), torch.float32)


@pytest.mark.parametrize("m,d", [(13, 29), (37, 11)])
def test_uniformity_baseline_matches_reference(m, d, gen):
    z = torch.randn(m, d, generator=gen)
    got = baselines.UNIFORMITY_BASELINES["umae-eager"](z)
    assert got.dtype == torch.float32
    assert_close(got, R.uniformity(z.double()), torch.float32)
