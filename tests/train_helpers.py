"""Shared set-up of the trainer tests: a tiny model's step pieces, a host-read counter."""
import contextlib
import functools

import torch

from mmae_fast import train
from mmae_fast.train import loop, regularisers, step

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
                "__index__", "nonzero")


@contextlib.contextmanager
def count_host_reads():
    calls = []
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counting(name, fn):
        @functools.wraps(fn)
        def wrapper(self, *a, **k):
            calls.append(name)
            return fn(self, *a, **k)
        return wrapper

    for name, fn in saved.items():
        setattr(torch.Tensor, name, counting(name, fn))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def _setup(extra=(), device="cpu"):
    args = train.parse_args(["--model", "tiny", "--batch", "8", "--device", device,
                             "--no-progress", "--lamb", "0.5", *extra])
    from mmae_fast import data
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
