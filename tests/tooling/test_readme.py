"""README.md stays true: it opens with the two set-up commands, its Python examples run, every
value they compute equals the independent float64 formula (tests/independent.py), every number
they print is one of those values (to the printed digits), and the claims the text makes about
them hold (the series within ``tol`` of the exact value, the effective rank in [1, min(m, d)])."""
import inspect
import pathlib
import re

import pytest
import torch

import independent as ind
import mmae_fast
from tolerances import REFERENCE_TOLERANCES, cancellation, exp_condition

README = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
PUBLIC = ["tcr_loss", "uniformity_loss", "matrix_entropy", "effective_rank",
          "matrix_joint_entropy", "matrix_mutual_information", "mec_loss", "matrix_cross_entropy"]
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def test_readme_opens_with_two_commands():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    commands = [line.split("#")[0].strip() for line in first if not line.startswith("#")]
    assert commands == ["make demo", "make test"]  # after its doc-test marker line


def expected_value(name, a):
    """(independent value, relative tolerance) of the call ``name`` with bound arguments ``a``;
    the tolerance is what the text states (series: ``tol``) or the measured float32 one."""
    rtol = REFERENCE_TOLERANCES[torch.float32][0]
    if name == "tcr_loss":
        if a["estimator"] == "taylor":
            return ind.tcr_taylor(a["z"], a["mu"], a["order"] or 4, a["centering"]), rtol
        exact = ind.tcr_exact(a["z"], a["mu"], a["centering"])
        return exact, (a["tol"] + rtol if a["estimator"] == "series" else rtol)
    formulas = {
        "uniformity_loss": lambda: ind.uniformity(a["z"]),
        "matrix_entropy": lambda: ind.matrix_entropy(a["z"], a["alpha"]),
        "effective_rank": lambda: ind.effective_rank(a["z"]),
        "matrix_joint_entropy": lambda: ind.joint_entropy(a["z1"], a["z2"], a["alpha"]),
        "matrix_mutual_information": lambda: ind.mutual_information(a["z1"], a["z2"], a["alpha"]),
        "mec_loss": lambda: ind.mec(a["z1"], a["z2"], a["eps_sq"], a["order"]),
        "matrix_cross_entropy": lambda: ind.matrix_cross_entropy(a["z1"], a["z2"], a["mu"],
                                                                 a["order"]),
    }
    value = formulas[name]()
    if name == "effective_rank":  # exp(H_1): H_1's relative error times H_1
        return value, rtol * exp_condition(ind.matrix_entropy(a["z"], 1.0))
    if name == "matrix_mutual_information":  # a difference of entropies
        alpha = a["alpha"]
        return value, rtol * cancellation([ind.matrix_entropy(a["z1"], alpha),
                                           ind.matrix_entropy(a["z2"], alpha),
                                           -ind.joint_entropy(a["z1"], a["z2"], alpha)])
    return value, rtol


@pytest.fixture
def recorded(monkeypatch):
    """Wrap the public functions of ``mmae_fast``: every call's name, bound arguments, result."""
    calls = []
    for name in PUBLIC:
        fn = getattr(mmae_fast, name)

        def wrapper(*args, _fn=fn, _name=name, **kwargs):
            bound = inspect.signature(_fn).bind(*args, **kwargs)
            bound.apply_defaults()
            out = _fn(*args, **kwargs)
            calls.append((_name, dict(bound.arguments), out.detach().clone()))
            return out

        monkeypatch.setattr(mmae_fast, name, wrapper)
    return calls


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_examples_print_true_values(index, capsys, recorded):
    code = BLOCKS[index]
    if "torch.distributed.group.WORLD" in code:
        pytest.skip("needs an initialised process group (covered by tests/library/test_distributed.py)")
    torch.manual_seed(0)
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip() and recorded  # every example computes and prints something
    values = []
    for name, args, out in recorded:
        expected, rtol = expected_value(name, args)
        assert out.item() == pytest.approx(expected, rel=rtol), (name, out.item(), expected)
        if name == "effective_rank":  # "exp(H_1), in [1, min(m, d)]"
            assert 1.0 <= out.item() <= min(args["z"].shape)
        values.append(out.item())
    for text in NUMBER.findall(printed):  # each printed number is a computed value, as printed
        decimals = len(text.split(".")[1].split("e")[0])
        half_ulp = 0.5 * 10.0 ** -decimals * (10.0 ** int(text.split("e")[1]) if "e" in text else 1)
        assert any(abs(float(text) - v) <= half_ulp * 1.0001 for v in values), (text, values)
