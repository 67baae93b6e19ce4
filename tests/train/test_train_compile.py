"""``--compile``: the step's forward, regulariser included, is one graph (fullgraph=True) that
is compiled once: no recompilation over later steps (dynamo's counters). The ``eager``
backend keeps the test fast: it traces exactly what inductor would compile."""
import pytest
import torch

from mmae_fast import train

from train_helpers import _setup, _steps


@pytest.mark.parametrize("extra", [
    ["--reg", "tcr"], ["--reg", "uniformity", "--cls-norm", "shared"],
    ["--reg", "tcr", "--accum-iter", "2", "--skip-nonfinite"],
])
def test_compiled_step_is_one_graph_without_recompiles(extra):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    setup = _setup(["--compile", "--compile-backend", "eager", *extra])
    results = _steps(*setup)  # 3 steps (x accum micro-batches)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert all(torch.isfinite(t).all() for t, _, _ in results)


def test_compiled_and_eager_losses_agree(tmp_path):
    common = ["--model", "tiny", "--batch", "8", "--device", "cpu", "--no-progress", "--steps",
              "3", "--log-every", "1", "--rank-every", "0", "--no-plot", "--no-export",
              "--reg", "tcr", "--lamb", "0.5"]
    torch._dynamo.reset()
    eager = train.train(train.parse_args(common + ["--output-dir", str(tmp_path / "e")]))
    comp = train.train(train.parse_args(common + ["--output-dir", str(tmp_path / "c"),
                                                  "--compile", "--compile-backend", "eager"]))
    torch.testing.assert_close(torch.tensor(comp["losses"]), torch.tensor(eager["losses"]),
                               rtol=1e-5, atol=1e-6)
