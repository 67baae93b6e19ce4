"""What ran: a dispatch mode recording every op called, and a recorder of the Triton kernels
launched in the interpreter (not a test file)."""
import pytest
from torch.utils._python_dispatch import TorchDispatchMode


class OpNames(TorchDispatchMode):
    """``with OpNames() as ops: ...`` leaves every aten / custom op called in ``ops.names``
    (e.g. "aten.mm.default", "mmae_fast.small_side.default"); ops called inside a custom op's
    own implementation are not seen."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def interpreter_launches(monkeypatch):
    """A list that records the name of every Triton kernel launched in the interpreter."""
    interp = pytest.importorskip("triton.runtime.interpreter")
    launched, run = [], interp.InterpretedFunction.run

    def counting_run(self, *args, **kwargs):
        launched.append(getattr(getattr(self, "fn", None), "__name__", repr(self)))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(interp.InterpretedFunction, "run", counting_run)
    return launched
