"""The regulariser tax: what ``--reg tcr`` adds to a training step over ``--reg none``.

Counted with the profiler (top-level aten ops of one eager step, forward + backward + update):
``step(tcr) - step(none) - tcr_loss alone (forward + backward)`` must be only the combination
``loss + lamb·R`` (one add, one mul and its backward mul) and the CLS row's gradient entering the
token tensor (``select_backward``): no extra norms, copies, casts, syncs or timers."""
import collections

import torch
from torch.profiler import ProfilerActivity, profile

import mmae_fast
from train_helpers import _setup, _steps

ALLOWED = {"aten::add": 1, "aten::mul": 2, "aten::select_backward": 1}


def _top_level_ops(prof) -> collections.Counter:
    """aten ops called outside other aten ops and outside the package's own (native) ops."""
    inner = ("aten::", "mmae_fast::")
    return collections.Counter(
        e.name for e in prof.events() if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith(inner)))


def _step_ops(extra):
    setup = _setup(extra)
    _steps(*setup[:5], setup[5][:1])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _steps(*setup[:5], setup[5][1:2])
    return _top_level_ops(prof)


def test_tcr_adds_only_the_regulariser_to_the_step():
    none, tcr = _step_ops(["--reg", "none"]), _step_ops(["--reg", "tcr"])
    z = torch.randn(8, 64, requires_grad=True)  # the tiny model's CLS features: batch 8, width 64
    mmae_fast.tcr_loss(z, 1.0).backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = mmae_fast.tcr_loss(z, 1.0)
        loss.backward(torch.ones_like(loss))
    alone = _top_level_ops(prof)
    alone["aten::ones_like"] -= 1  # the seed gradient above, not part of R
    extra = tcr.copy()
    extra.subtract(none)
    extra.subtract(alone)
    extra = {k: v for k, v in extra.items() if v}
    assert extra == ALLOWED, extra
