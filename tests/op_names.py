"""A dispatch mode that records the name of every op called (not a test file)."""
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
