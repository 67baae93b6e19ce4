"""No host synchronisation inside a training step (the loop reads the device at log steps).

CPU: every Tensor method and torch function that copies a value to the host (``item``,
``tolist``, ``cpu``, ``.to("cpu")``, ``numpy``, ``bool``/``float``/``int`` of a tensor,
``equal``, ``allclose``, ``nonzero``, ``unique``, boolean-mask indexing: ``train_helpers``) is
patched with a counter around ``train_step``, and around a whole ``train()`` run. GPU:
``torch.cuda.set_sync_debug_mode("error")`` around real steps."""
import collections

import pytest
import torch

from mmae_fast import train
from mmae_fast.train import loop
from train_helpers import _setup, _steps, count_host_reads


def test_the_counter_sees_host_reads():
    with count_host_reads() as calls:
        t = torch.ones(2)
        t.sum().item(), float(t[0]), bool(t[1]), t.tolist()
        t.cpu(), t.to("cpu"), t.to(device="cpu"), t.to(torch.float64), t.to(t.device)
        torch.equal(t, t), t.equal(t), torch.allclose(t, t), t.allclose(t)
        t[t > 0], t[0], t[:1], torch.unique(t), t.unique(), t.nonzero(), torch.nonzero(t)
    assert calls == ["item", "__float__", "__bool__", "tolist", "cpu", "to(cpu)", "to(cpu)",
                     "torch.equal", "equal", "torch.allclose", "allclose", "[bool mask]",
                     "torch.unique", "torch.unique", "nonzero", "torch.nonzero"]


@pytest.mark.parametrize("extra", [
    ["--reg", "tcr"], ["--reg", "none"], ["--reg", "uniformity"],
    ["--reg", "tcr", "--skip-nonfinite", "--accum-iter", "2", "--cls-norm", "shared"],
    ["--reg", "tcr", "--online-head", "bn-linear", "--cls-norm", "separate"],
])
def test_train_step_reads_nothing_back(extra):
    setup = _setup(extra)
    _steps(*setup[:5], setup[5][:1])  # first step outside: lazy state initialisation
    with count_host_reads() as calls:
        results = _steps(*setup)
    assert calls == [], f"host reads in the step: {calls}"
    terms, faults, cls = results[-1]
    assert terms.shape == (5,) and faults.shape == (2,) and cls.shape == (8, 64)
    assert torch.isfinite(terms).all() and not faults.any()  # (read after the counted region)


def test_the_loop_reads_the_device_only_at_log_steps(tmp_path, monkeypatch):
    """12 steps, --log-every 4: 3 reads of the window (one tolist each), none per step."""
    reads = []
    orig = loop._Log.flush

    def flush(self, *a, **k):
        reads.append(len(self.pending))
        return orig(self, *a, **k)

    monkeypatch.setattr(loop._Log, "flush", flush)
    res = train.train(train.parse_args(
        ["--model", "tiny", "--batch", "8", "--device", "cpu", "--no-progress", "--steps", "12",
         "--log-every", "4", "--rank-every", "0", "--no-plot", "--no-export",
         "--output-dir", str(tmp_path)]))
    assert reads == [4, 4, 4] and len(res["losses"]) == 12


@pytest.mark.parametrize("extra", [[], ["--grad-norm-every", "4"]])
def test_the_whole_loop_reads_the_device_only_at_log_steps(tmp_path, monkeypatch, extra):
    """Every host read of a whole ``train()`` run (set-up, steps, logging, the final
    checkpoint) counted: 12 and 24 steps with --log-every 4 differ only by the 3 more flushes,
    each one read of its window, also with the per-term gradient norms and the spectrum at every
    log step. A read per step anywhere in the loop (e.g. ``float(loss)`` beside
    ``log.record``) fails here, though ``train_step`` itself stays clean."""
    orig, per_flush = loop._Log.flush, []

    def flush(self, *a, **k):
        before = len(calls)
        orig(self, *a, **k)
        per_flush.append(len(calls) - before)

    monkeypatch.setattr(loop._Log, "flush", flush)
    outside = {}
    for steps in (12, 24):
        per_flush.clear()
        with count_host_reads() as calls:
            train.train(train.parse_args(
                ["--model", "tiny", "--batch", "8", "--device", "cpu", "--no-progress",
                 "--steps", str(steps), "--log-every", "4", "--rank-every", "0", "--no-plot",
                 "--no-export", "--output-dir", str(tmp_path / str(steps)), *extra]))
        assert per_flush == [1] * (steps // 4), per_flush  # one read of the window
        outside[steps] = collections.Counter(calls)
        outside[steps].subtract({"tolist": steps // 4})
    grown = {k: n for k, n in (outside[24] - outside[12]).items() if n}
    assert outside[24] == outside[12] and not grown, f"host reads per step: {grown}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", [["--reg", "tcr"], ["--reg", "tcr", "--precision", "fp16",
                                                      "--skip-nonfinite"]])
def test_no_sync_on_the_gpu(extra):
    setup = _setup(extra, device="cuda")
    _steps(*setup[:5], setup[5][:1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(*setup)
    finally:
        torch.cuda.set_sync_debug_mode("default")
