"""Shared set-up of the trainer tests: a tiny model's step pieces, a host-read counter."""
import contextlib
import errno
import functools
import io
import os

import torch

from mmae_fast import train
from mmae_fast.train import loop, regularisers, step

#: Tensor methods that copy a value (or an output size) from the device to the host
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
                "__index__", "__complex__", "nonzero", "is_nonzero", "masked_select", "equal",
                "allclose")
#: torch functions that do (``torch.unique`` also serves ``Tensor.unique``)
SYNC_FUNCTIONS = ("nonzero", "masked_select", "equal", "allclose", "unique")


def _to_the_host(args, kwargs) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU by a string (``.to("cpu")``). A
    ``torch.device`` target is not counted: on the CPU it is also what ``.to(x.device)`` (no
    sync on a GPU, e.g. in the model's masking) passes."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and target.split(":")[0] == "cpu"


def _bool_mask(index) -> bool:
    """Whether ``t[index]`` selects with a boolean mask (its output size is a host read)."""
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts)


@contextlib.contextmanager
def count_host_reads():
    """Record, in order, every call that reads the device from the host: the methods and
    functions above, ``.to("cpu")`` and boolean-mask indexing. On
    the CPU nothing syncs, so this counts what would on a GPU."""
    calls = []
    patched = [(torch.Tensor, name, name, None) for name in SYNC_METHODS]
    patched += [(torch, name, f"torch.{name}", None) for name in SYNC_FUNCTIONS]
    patched += [(torch.Tensor, "to", "to(cpu)", lambda a, k: _to_the_host(a[1:], k)),
                (torch.Tensor, "__getitem__", "[bool mask]", lambda a, k: _bool_mask(a[1]))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patched]

    def counting(label, fn, when):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            if when is None or when(a, k):
                calls.append(label)
            return fn(*a, **k)
        return wrapper

    for (owner, name, label, when), (_, _, fn) in zip(patched, saved):
        setattr(owner, name, counting(label, fn, when))
    try:
        yield calls
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _setup(extra=(), device="cpu"):
    args = train.parse_args(["--model", "tiny", "--batch", "8", "--device", device,
                             "--no-progress", "--lamb", "0.5", *extra])
    from mmae_fast.mae import data
    source = data.build("digits", img_size=16, batch_per_rank=8, seed=0)
    model, opt = loop._build(args, source, torch.device(device), 1)
    scaler = torch.amp.GradScaler(device, enabled=args.precision == "fp16")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    fwd = loop._make_forward(args, model, regularisers.build(args, None, 1), amp, 1)
    batches = [[loop._micro_batch(args, source, model, torch.device(device), s, k, 0, 1)
                for k in range(args.accum_iter)] for s in range(3)]
    return args, model, opt, scaler, fwd, batches


def _steps(args, model, opt, scaler, fwd, batches):
    out = []
    for micro in batches:
        out.append(step.train_step(fwd, micro, net=model, opt=opt, scaler=scaler,
                                   accum=args.accum_iter, skip_nonfinite=args.skip_nonfinite))
    return out


def flip_bit(path) -> None:
    """Flip the lowest bit of the middle byte of the largest tensor storage in the
    ``torch.save`` zip at ``path`` (the storages are stored uncompressed: the value changes,
    the file still loads)."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: (i.file_size, i.filename))
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)  # the local header: name and extra-field lengths
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 1]))


def changed_tensors(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The '/'-joined paths of the tensors that differ between two loaded checkpoints."""
    out = []
    for k, v in before.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += changed_tensors(v, after[k], name + "/")
        elif torch.is_tensor(v) and not torch.equal(v, after[k]):
            out.append(name)
    return out


class FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a full disk)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def fill_the_disk_on_save(monkeypatch, from_call: int, room: int = 4096) -> list:
    """Patch ``torch.save``: its ``from_call``-th call and later ones write through
    :class:`FullDisk` (torch's own writer meets the ENOSPC mid-file). Returns the list of
    calls (one entry each)."""
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        return real_save(obj, f if len(calls) < from_call else FullDisk(f, room), *a, **k)

    monkeypatch.setattr(torch, "save", save)
    return calls
