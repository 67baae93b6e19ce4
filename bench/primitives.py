"""Timing of the n×n primitives the small side is built from (GPU only, prints one line per n).

    python -m bench.primitives

Products in float64 / float32 / TF32 / bf16, Cholesky, cholesky_inverse, triangular solve,
inverse, eigh, and the element-wise passes (axpy, diagonal sum, Frobenius product) on
well-conditioned SPD matrices at n = 768 and 1024; CUDA events around 10 calls after 3 warm-up
calls. The H100 output of 2026-11-26 is in bench/results/cuda-nvidia-h100-80gb-hbm3/.
"""
import torch


def _time(fn, calls=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def main():
    for n in (768, 1024):
        a = torch.randn(n, n, device="cuda", dtype=torch.float64)
        a = a @ a.T / n + torch.eye(n, device="cuda", dtype=torch.float64)
        eye = torch.eye(n, device="cuda", dtype=torch.float64)
        r = {}
        for dt in (torch.float64, torch.float32):
            x, tag = a.to(dt), str(dt)[-2:]
            chol = torch.linalg.cholesky_ex(x)[0]
            r[f"mm{tag}"] = _time(lambda: x @ x)
            r[f"chol{tag}"] = _time(lambda: torch.linalg.cholesky_ex(x))
            r[f"cinv{tag}"] = _time(lambda: torch.cholesky_inverse(chol))
            r[f"trsm{tag}"] = _time(lambda: torch.linalg.solve_triangular(chol, eye.to(dt),
                                                                          upper=False))
            r[f"inv{tag}"] = _time(lambda: torch.linalg.inv_ex(x))
            r[f"eigh{tag}"] = _time(lambda: torch.linalg.eigh(x), 3)
        torch.backends.cuda.matmul.allow_tf32 = True
        x = a.float()
        r["mmtf32"] = _time(lambda: x @ x)
        torch.backends.cuda.matmul.allow_tf32 = False
        xb = a.bfloat16()
        r["mmbf16"] = _time(lambda: xb @ xb)
        r["diag_sum64"] = _time(lambda: a.diagonal().sum())
        r["axpy64"] = _time(lambda: a * 2.0 + a)
        r["frob64"] = _time(lambda: (a * a).sum())
        r["addmm64"] = _time(lambda: torch.addmm(a, a, a, beta=-1.0, alpha=2.0))
        print(n, " ".join(f"{k}={v * 1e3:.0f}us" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
