"""Time the staged Triton ops on a GPU beside one torch tensor-core GEMM of the same size.

    python -m mmae_fast.ops.tcr.triton.stage_bench [--shapes 1024x1024,4096x768,65536x1024] [--dtype bf16]
        [--sweep]

Per shape (feature side, d <= m): ``triton_gram`` (h -> G, rinv), ``triton_grad`` (dh from q,
v), each the median of CUDA-event timings; beside them ``torch.mm`` of the bf16/fp16 operands of
the same product (Zᵀ Z, and Z Q: one half product; split3 makes three, the two-launch projection
six) and the copy floor (read h + write dh). Also the relative errors of G and dh against the
contract (``mmae_fast.ops.tcr.stages``) run in float64 on the same input. Prints one line per
shape.
"""
from __future__ import annotations

import argparse

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _time(fn, reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after a warm-up (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _oracle(h: torch.Tensor, q: torch.Tensor, v: torch.Tensor, coef: torch.Tensor):
    """``(G, dh)`` of the contract, ``stages.gram`` / ``stages.grad`` on float64 copies (feature
    side, scale 1)."""
    from .. import stages
    h64 = h.double()
    g64, rinv64 = stages.gram(h64, True)
    return g64, stages.grad(coef.double(), h64, rinv64, q.double(), v.double(), True, 1.0)


def run(m: int, d: int, dtype: torch.dtype) -> str:
    from . import backend as tb
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(m, d, device="cuda", generator=gen) + 0.3).to(dtype)
    g, rinv = tb.gram(h, True)
    q = torch.linalg.inv(torch.eye(d, device="cuda") + 3.0 / d * g)
    q = q / q.abs().max()
    v = q @ (h.float() * rinv[:, None]).sum(0) / m
    one = torch.tensor(1.0, device="cuda")
    t_gram = _time(lambda: tb.gram(h, True))
    t_grad = _time(lambda: tb.grad(one, h, rinv, q, v, True, 1.0))
    half = dtype if dtype != torch.float32 else torch.bfloat16
    zh, qh = h.to(half), q.to(half)
    t_mm_gram = _time(lambda: torch.mm(zh.T, zh))
    t_mm_grad = _time(lambda: torch.mm(zh, qh))
    floor = 2 * h.numel() * h.element_size() / 2.9e12 * 1e3  # ms at the measured 2.9 TB/s copy
    # accuracy against the float64 contract on the same input
    g64, ref = _oracle(h, q, v, one)
    g_err = float((g.double() - g64).norm() / g64.norm())
    dh = tb.grad(one, h, rinv, q, v, True, 1.0)
    dh_err = float((dh.double() - ref).norm() / ref.norm())
    round_err = float((ref.to(dtype).double() - ref).norm() / ref.norm())
    return (f"{m}x{d} {str(dtype)[6:]}: gram {t_gram:.3f} ms (torch.mm {half} ZᵀZ "
            f"{t_mm_gram:.3f}), grad {t_grad:.3f} ms (torch.mm ZQ {t_mm_grad:.3f}), copy floor "
            f"{floor:.3f} ms; rel err G {g_err:.1e}, dh {dh_err:.1e} (dh rounding alone "
            f"{round_err:.1e})")


#: Configurations tried by --sweep: gram (block_n, block_k, warps, stages), grad (block_m,
#: block_n, block_k, warps, stages).
GRAM_SWEEP = [(64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 32, 4, 4)]
GRAD_SWEEP = [(64, 64, 64, 4, 3), (64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (128, 128, 32, 8, 3),
              (64, 128, 32, 4, 3), (128, 128, 64, 8, 2), (128, 64, 64, 8, 3)]


def sweep(m: int, d: int, dtype: torch.dtype) -> None:
    """Time each configuration of GRAM_SWEEP / GRAD_SWEEP (feature side) with its accuracy."""
    from .... import reference
    from . import grad_kernel as stage_grad, gram_kernel as stage_gram
    from .config import StageConfig
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(m, d, device="cuda", generator=gen) + 0.3).to(dtype)
    one = torch.tensor(1.0, device="cuda")
    from .. import stages
    g64, rinv64 = stages.gram(h.double(), True)
    q = torch.linalg.inv(torch.eye(d, device="cuda", dtype=torch.float64) + 3.0 / d * g64)
    q = (q / q.abs().max()).float()
    v = (q.double() @ (h.double() * rinv64[:, None]).sum(0) / m).float()
    ref = _oracle(h, q, v, one)[1]
    half = dtype != torch.float32
    err = lambda x, y: float((x.double() - y).norm() / y.norm())  # noqa: E731
    for bn, bk, w, st in GRAM_SWEEP:
        cfg = StageConfig(bn, bk, 64, half, False, "ieee", w, st)
        try:
            g = stage_gram.gram(h, True, reference.EPS, cfg)[0]
            t = _time(lambda: stage_gram.gram(h, True, reference.EPS, cfg))
            print(f"  gram {m}x{d} bn={bn} bk={bk} w={w} st={st}: {t:.3f} ms, "
                  f"err {err(g, g64):.1e}", flush=True)
        except Exception as exc:  # a configuration the GPU cannot take (shared memory)
            print(f"  gram bn={bn} bk={bk} w={w} st={st}: failed {type(exc).__name__}: "
                  f"{str(exc)[:120]}", flush=True)
    rinv = (1.0 / h.float().norm(dim=1)).contiguous()
    for bm, bn, bk, w, st in GRAD_SWEEP:
        cfg = StageConfig(bn, bk, bm, half, False, "ieee", w, st)
        try:
            dh = stage_grad.grad(one, h, rinv, q, v, True, 1.0, reference.EPS, cfg)
            t = _time(lambda: stage_grad.grad(one, h, rinv, q, v, True, 1.0, reference.EPS,
                                              cfg))
            print(f"  grad {m}x{d} bm={bm} bn={bn} bk={bk} w={w} st={st}: {t:.3f} ms, "
                  f"err {err(dh, ref):.1e}", flush=True)
        except Exception as exc:
            print(f"  grad bm={bm} bn={bn} bk={bk} w={w} st={st}: failed "
                  f"{type(exc).__name__}: {str(exc)[:120]}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x1024,4096x768,65536x1024")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--sweep", action="store_true", help="time GRAM_SWEEP / GRAD_SWEEP")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("stage_bench needs a CUDA device")
    for shape in args.shapes.split(","):
        m, d = (int(x) for x in shape.split("x"))
        print(run(m, d, DTYPES[args.dtype]), flush=True)
        if args.sweep:
            sweep(m, d, DTYPES[args.dtype])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
