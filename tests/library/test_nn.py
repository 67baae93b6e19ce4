"""``mmae_fast.nn``: every module against the independent float64 formulas (value and, where a
closed form exists, gradient), equal to its function with the same settings (every setting
reaches the call), constructor checks, ``distributed=`` / ``group=`` without a process group,
no state, deepcopy / pickle, ``torch.compile(fullgraph=True)``. Over ranks:
test_distributed_losses.py."""
import copy
import pickle

import pytest
import torch

import independent as ind
import mmae_fast as mf
from mmae_fast import nn as mnn

#: (module, function with the same settings, independent value or None, views)
CASES = {
    "tcr": (lambda: mnn.TCRLoss(0.7), lambda z: mf.tcr_loss(z, 0.7),
            lambda h: ind.tcr_exact(h, 0.7), 1),
    "tcr-centred-taylor": (lambda: mnn.TCRLoss(0.2, centering=True, estimator="taylor", order=3),
                           lambda z: mf.tcr_loss(z, 0.2, centering=True, estimator="taylor",
                                                 order=3),
                           lambda h: ind.tcr_taylor(h, 0.2, 3, True), 1),
    "tcr-series": (lambda: mnn.TCRLoss(2.0, estimator="series", tol=1e-2),
                   lambda z: mf.tcr_loss(z, 2.0, estimator="series", tol=1e-2), None, 1),
    "uniformity": (lambda: mnn.UniformityLoss(), mf.uniformity_loss, ind.uniformity, 1),
    "entropy": (lambda: mnn.MatrixEntropy(), mf.matrix_entropy, ind.matrix_entropy, 1),
    "entropy-2.5": (lambda: mnn.MatrixEntropy(2.5), lambda z: mf.matrix_entropy(z, 2.5),
                    lambda h: ind.matrix_entropy(h, 2.5), 1),
    "effective_rank": (lambda: mnn.EffectiveRank(), mf.effective_rank, ind.effective_rank, 1),
    "joint": (lambda: mnn.MatrixJointEntropy(2.0), lambda a, b: mf.matrix_joint_entropy(a, b, 2.0),
              lambda a, b: ind.joint_entropy(a, b, 2.0), 2),
    "mi": (lambda: mnn.MatrixMutualInformation(0.5),
           lambda a, b: mf.matrix_mutual_information(a, b, 0.5),
           lambda a, b: ind.mutual_information(a, b, 0.5), 2),
    "mec": (lambda: mnn.MECLoss(eps_sq=0.5, order=3),
            lambda a, b: mf.mec_loss(a, b, eps_sq=0.5, order=3),
            lambda a, b: ind.mec(a, b, 0.5, 3), 2),
    "mce": (lambda: mnn.MatrixCrossEntropy(mu=0.5, order=3),
            lambda a, b: mf.matrix_cross_entropy(a, b, mu=0.5, order=3),
            lambda a, b: ind.matrix_cross_entropy(a, b, 0.5, 3), 2),
}
#: closed-form gradients (tests/independent.py) of the one-view modules
GRADIENTS = {"tcr": lambda h: ind.tcr_exact_grad(h, 0.7), "uniformity": ind.uniformity_grad,
             "entropy": ind.matrix_entropy_grad,
             "entropy-2.5": lambda h: ind.matrix_entropy_grad(h, 2.5),
             "effective_rank": lambda h: ind.matrix_entropy_grad(h) * ind.effective_rank(h)}


def _views(gen, n):
    h = torch.randn(20, 6, generator=gen, dtype=torch.float64) + 0.3
    return (h,) if n == 1 else (h, h + 0.4 * torch.randn(20, 6, generator=gen,
                                                         dtype=torch.float64))


@pytest.mark.parametrize("name", CASES)
def test_module_equals_its_function_and_the_independent_value(name, gen):
    make, fn, value, n = CASES[name]
    views = _views(gen, n)
    module = make()
    xs = [v.clone().requires_grad_() for v in views]
    got = module(*xs)
    assert torch.equal(got, fn(*xs))
    if value is not None:
        assert got.item() == pytest.approx(value(*views), rel=1e-11)
    if name in GRADIENTS:
        got.backward()
        want = torch.from_numpy(GRADIENTS[name](views[0]))
        assert torch.allclose(xs[0].grad, want, rtol=1e-9, atol=1e-13)


def test_settings_reach_the_function(gen):
    """Two settings of each hyper-parameter give values further apart than any tolerance, and
    the module follows each (a module dropping one would equal the other)."""
    (h,) = _views(gen, 1)
    pairs = [(mnn.TCRLoss(0.7), mnn.TCRLoss(0.3)),
             (mnn.TCRLoss(0.7), mnn.TCRLoss(0.7, centering=True)),
             (mnn.TCRLoss(0.2, estimator="taylor", order=2),
              mnn.TCRLoss(0.2, estimator="taylor", order=4)),
             (mnn.TCRLoss(2.0, estimator="series", tol=1e-1),
              mnn.TCRLoss(2.0, estimator="series", tol=1e-6)),
             (mnn.MatrixEntropy(1.0), mnn.MatrixEntropy(3.0))]
    for a, b in pairs:
        assert abs(a(h).item() - b(h).item()) > 1e-6 * abs(a(h).item()), (a, b)
    a, b = _views(gen, 2)
    for m1, m2 in [(mnn.MECLoss(eps_sq=0.5), mnn.MECLoss(eps_sq=0.9)),
                   (mnn.MECLoss(order=2), mnn.MECLoss(order=3)),
                   (mnn.MatrixCrossEntropy(mu=0.5), mnn.MatrixCrossEntropy(mu=1.5)),
                   (mnn.MatrixCrossEntropy(order=2), mnn.MatrixCrossEntropy(order=3)),
                   (mnn.MatrixJointEntropy(1.0), mnn.MatrixJointEntropy(2.0)),
                   (mnn.MatrixMutualInformation(1.0), mnn.MatrixMutualInformation(2.0))]:
        assert abs(m1(a, b).item() - m2(a, b).item()) > 1e-6 * abs(m1(a, b).item()), (m1, m2)


@pytest.mark.parametrize("name", [k for k, case in CASES.items() if case[3] == 1])
def test_distributed_true_without_a_process_group_is_one_process(name, gen):
    make, fn, _, _ = CASES[name]
    module = make()
    module.distributed = True
    (h,) = _views(gen, 1)
    assert not torch.distributed.is_initialized()
    assert torch.equal(module(h), fn(h))


@pytest.mark.parametrize("name", CASES)
def test_no_state_deepcopy_pickle(name, gen):
    make, _, _, n = CASES[name]
    module = make()
    assert not list(module.parameters()) and not list(module.buffers())
    assert module.state_dict() == {}
    views = _views(gen, n)
    for other in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert repr(other) == repr(module)
        assert torch.equal(other(*views), module(*views))


@pytest.mark.parametrize("name", CASES)
def test_compiles_with_fullgraph(name, gen):
    make, fn, _, n = CASES[name]
    torch._dynamo.reset()
    module = make()
    if n == 1:
        module.distributed = True  # the group is resolved while tracing
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    views = _views(gen, n)
    xs = [v.clone().requires_grad_() for v in views]
    ys = [v.clone().requires_grad_() for v in views]
    got, want = compiled(*xs), fn(*ys)
    assert torch.allclose(got, want, rtol=1e-12)
    got.backward()
    want.backward()
    for x, y in zip(xs, ys):
        assert torch.allclose(x.grad, y.grad, rtol=1e-9, atol=1e-14)


def test_extra_repr_shows_the_settings():
    text = repr(mnn.TCRLoss(3.0, centering=True, estimator="series", tol=1e-3,
                            grad_semantics="per_rank", backend="reference"))
    for part in ("mu=3.0", "centering=True", "estimator='series'", "tol=0.001",
                 "grad_semantics='per_rank'", "backend='reference'", "distributed=False"):
        assert part in text, text
    assert "eps_sq=0.1" in repr(mnn.MECLoss(eps_sq=0.1))
    assert "alpha=2.0" in repr(mnn.MatrixEntropy(2.0))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: mnn.TCRLoss(-1.0), ValueError, "mu must be"),
    (lambda: mnn.TCRLoss(centering=1), TypeError, "centering must be True or False"),
    (lambda: mnn.TCRLoss(estimator="svd"), ValueError, "estimator must be one of"),
    (lambda: mnn.TCRLoss(order=3), ValueError, "order applies to estimator='series'"),
    (lambda: mnn.TCRLoss(estimator="taylor", order=0), ValueError, "order must be >= 1"),
    (lambda: mnn.TCRLoss(tol=0.0), ValueError, "tol must be"),
    (lambda: mnn.TCRLoss(grad_semantics="mean"), ValueError, "grad_semantics must be one of"),
    (lambda: mnn.UniformityLoss(backend="gpu"), ValueError, "backend must be one of"),
    (lambda: mnn.UniformityLoss(distributed=1), TypeError, "distributed must be True or False"),
    (lambda: mnn.UniformityLoss(group=object()), ValueError,
     "group was given with distributed=False"),
    (lambda: mnn.MatrixEntropy(0.0), ValueError, "alpha must be"),
    (lambda: mnn.MatrixEntropy(backend="triton"), ValueError, "no 'triton' kernel"),
    (lambda: mnn.EffectiveRank(check_finite="yes"), TypeError, "check_finite must be"),
    (lambda: mnn.MECLoss(eps_sq=0.0), ValueError, "eps_sq must be"),
    (lambda: mnn.MECLoss(order=2.0), TypeError, "order must be an int"),
    (lambda: mnn.MatrixCrossEntropy(mu=float("nan")), ValueError, "mu must be"),
    (lambda: mnn.MatrixJointEntropy(alpha=-1.0), ValueError, "alpha must be"),
])
def test_constructor_checks_name_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("cls", [mnn.MatrixJointEntropy, mnn.MatrixMutualInformation])
def test_hadamard_modules_refuse_distributed(cls):
    with pytest.raises(ValueError, match="distributed: .* each process's own batch"):
        cls(distributed=True)


def test_forward_checks_the_features():
    with pytest.raises(ValueError, match="z must be 2-D"):
        mnn.UniformityLoss()(torch.randn(5))
    with pytest.raises(ValueError, match="same number of rows"):
        mnn.MECLoss()(torch.randn(5, 3), torch.randn(6, 3))


@pytest.mark.parametrize("fn", [mf.matrix_joint_entropy, mf.matrix_mutual_information])
def test_hadamard_functions_refuse_a_group(fn):
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match=f"group: {fn.__name__} has no d×d Gram all-reduce"):
        fn(z, z, group=object())


def test_exported_as_mmae_fast_nn():
    assert mf.nn is mnn
    assert set(mnn.__all__) == {"TCRLoss", "UniformityLoss", "MatrixEntropy", "EffectiveRank",
                                "MatrixJointEntropy", "MatrixMutualInformation", "MECLoss",
                                "MatrixCrossEntropy"}
