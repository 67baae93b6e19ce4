"""Measure the errors behind tests/tolerances.py's REFERENCE_TOLERANCES: the public functions on
the reference path (CPU) per input dtype, against the independent float64 formulas of
tests/independent.py on the same (rounded) input. Prints the worst relative value error and
relative Frobenius gradient error per (dtype, function). Seconds on 2 CPU cores.

    python scripts/measure_tolerances.py
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import independent as ind  # noqa: E402
import mmae_fast as mf  # noqa: E402

SHAPES = [(7, 13), (32, 16), (64, 48), (17, 40), (128, 32), (40, 96)]
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def main():
    worst = {}

    def note(key, value_err, grad_err=0.0):
        w = worst.setdefault(key, [0.0, 0.0])
        w[0], w[1] = max(w[0], value_err), max(w[1], grad_err)

    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        for m, d in SHAPES:
            base = (torch.randn(m, d, generator=g, dtype=torch.float64)
                    + 0.3 * torch.randn(1, d, generator=g, dtype=torch.float64))
            other = base.flip(0) + 0.5 * torch.randn(m, d, generator=g, dtype=torch.float64)
            for dt in DTYPES:
                x, x2 = base.to(dt), other.to(dt)
                x64, x264 = x.double(), x2.double()
                for est, order, mu in (("exact", None, 3.0), ("series", None, 3.0),
                                       ("taylor", 3, 0.2)):
                    for cen in (False, True):
                        zz = x.clone().requires_grad_()
                        v = mf.tcr_loss(zz, mu, centering=cen, estimator=est, order=order)
                        v.backward()
                        z64 = x64.clone().requires_grad_()
                        v64 = mf.tcr_loss(z64, mu, centering=cen, estimator=est, order=order)
                        v64.backward()
                        exp = {"exact": lambda: ind.tcr_exact(x64, mu, cen),
                               "taylor": lambda: ind.tcr_taylor(x64, mu, order, cen),
                               "series": lambda: v64.item()}[est]()
                        note((dt, "tcr-" + est), abs(v.item() - exp) / abs(exp),
                             float((zz.grad.double() - z64.grad).norm() / z64.grad.norm()))
                pairs = {
                    "uniformity": (mf.uniformity_loss(x), ind.uniformity(x64)),
                    "entropy-0.5": (mf.matrix_entropy(x, 0.5), ind.matrix_entropy(x64, 0.5)),
                    "entropy-1": (mf.matrix_entropy(x, 1.0), ind.matrix_entropy(x64, 1.0)),
                    "entropy-2": (mf.matrix_entropy(x, 2.0), ind.matrix_entropy(x64, 2.0)),
                    "entropy-3": (mf.matrix_entropy(x, 3.0), ind.matrix_entropy(x64, 3.0)),
                    "effective-rank": (mf.effective_rank(x), ind.effective_rank(x64)),
                    "joint": (mf.matrix_joint_entropy(x, x2), ind.joint_entropy(x64, x264)),
                    "mi": (mf.matrix_mutual_information(x, x2),
                           ind.mutual_information(x64, x264)),
                    "mec": (mf.mec_loss(x, x2, eps_sq=8.0), ind.mec(x64, x264, 8.0)),
                    "mce": (mf.matrix_cross_entropy(x, x2), ind.matrix_cross_entropy(x64, x264)),
                }
                for name, (got, exp) in pairs.items():
                    note((dt, name), abs(got.item() - exp) / max(abs(exp), 1e-300))
    for (dt, name), (ve, ge) in sorted(worst.items(), key=lambda kv: (kv[0][1], str(kv[0][0]))):
        print(f"{str(dt):16s} {name:15s} value {ve:.2e}  grad {ge:.2e}")


if __name__ == "__main__":
    main()
