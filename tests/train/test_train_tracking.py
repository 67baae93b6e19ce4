"""mmae-train --tensorboard / --wandb: every metrics.jsonl scalar reaches both trackers at its
step (read back with TensorBoard's EventAccumulator and from the offline wandb run's own
records), the epoch_1000x axis, the run's arguments as wandb config, curves.png as an image;
a missing package is one usage line; a failing tracker is one warning and the run goes on; only
rank 0 tracks. The health metrics (spectrum of the CLS batch, per-term gradient norms) against
independent computations, and no host read per step."""
import argparse
import copy
import math
import sys

import numpy as np
import pytest
import torch

from mmae_fast import train
from mmae_fast.mae import track
from mmae_fast.train import health, loop, outputs, step
from track_helpers import numeric, tensorboard_scalars, wandb_offline_run
from train_helpers import _setup

BASE = ["--model", "tiny", "--data", "digits", "--steps", "4", "--batch", "16", "--no-progress",
        "--device", "cpu", "--no-export", "--rank-every", "0", "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One 4-step run with both trackers (wandb offline: WANDB_MODE unset), a row every 2
    steps, every health metric at both log steps, curves.png at the end."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        assert train.main(BASE + ["--log-every", "2", "--grad-norm-every", "2", "--tensorboard",
                                  "--wandb", "--wandb-name", "t1", "--output-dir", str(out)]) == 0
    return out, outputs.read_metrics(out / "metrics.jsonl")


def test_tensorboard_has_every_metrics_scalar_at_its_step(tracked_run):
    out, rows = tracked_run
    tb = tensorboard_scalars(out / "tensorboard")
    assert [r["step"] for r in rows] == [1, 3]
    keys = set()
    for row in rows:
        e1000 = int(row["epoch"] * 1000)
        for key, value in numeric(row).items():
            keys.add(key)
            assert tb[f"train/{key}"][row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-30)
            assert tb[f"train_epoch_1000x/{key}"][e1000] == pytest.approx(value, rel=1e-6,
                                                                           abs=1e-30)
    # the health metrics are among them, at both log steps
    assert set(health.SPECTRUM + health.GRAD_NORMS) <= keys
    assert {"loss", "loss_mae", "loss_reg", "lr", "epoch"} <= keys
    assert set(tb) == {f"{g}/{k}" for g in ("train", "train_epoch_1000x") for k in keys}


def test_wandb_offline_run_has_every_key_the_config_and_the_curves(tracked_run):
    out, rows = tracked_run
    run = wandb_offline_run(out)
    for row in rows:
        logged = run["history"][row["step"]]
        for key, value in numeric(row).items():
            assert logged[f"train/{key}"] == pytest.approx(value, rel=1e-12), key
        assert logged["epoch_1000x"] == int(row["epoch"] * 1000)
    config = run["config"]
    assert config["lamb"] == 0.01 and config["steps"] == 4 and config["total_steps"] == 4
    assert config["wandb_name"] == "t1"
    assert any(f.startswith("media/images/train/curves") and f.endswith(".png")
               for f in run["files"]), run["files"]


def test_health_metrics_in_the_rows(tracked_run):
    """R of the spectrum is the loss's R (one process, exact, uncentred: the same batch); the
    coding rate its negative; cond_A inside [1, kappa_bound]; the gradient norms positive."""
    _, rows = tracked_run
    for row in rows:
        assert row["tcr_R"] == pytest.approx(row["loss_reg"], rel=1e-5)
        assert row["coding_rate"] == -row["tcr_R"] > 0
        assert row["kappa_bound"] == pytest.approx(1 + 1.0 * 16 / 64)
        assert 1 < row["cond_A"] <= row["kappa_bound"]
        assert 1 / 16 <= row["top_eig_share"] <= 1
        assert all(row[k] > 0 for k in health.GRAD_NORMS)


# ----------------------------------------------------------------------------- missing / failing
@pytest.mark.parametrize("flag, module", [("--tensorboard", "tensorboard"), ("--wandb", "wandb")])
def test_a_missing_package_is_one_usage_line(tmp_path, capsys, monkeypatch, flag, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError
    with pytest.raises(SystemExit) as exc:
        train.main(BASE + [flag, "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"mmae-train: error: {flag} needs the '{module}' package, which is not "
                       f"installed: pip install 'mmae_fast[track]'")
    assert not (tmp_path / "o").exists()


def _warnings(err: str) -> list:
    return [line for line in err.splitlines() if "WARNING" in line and "logging failed" in line]


def test_a_failing_tensorboard_writer_is_one_warning_and_the_run_goes_on(tmp_path, capsys,
                                                                        monkeypatch):
    from torch.utils.tensorboard import SummaryWriter
    calls = []

    def full_disk(self, *a, **k):
        calls.append(a[0])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    out = tmp_path / "tb"
    assert train.main(BASE + ["--log-every", "1", "--tensorboard", "--output-dir", str(out)]) == 0
    (line,) = _warnings(capsys.readouterr().err)
    assert line == ("mmae-train: WARNING tensorboard logging failed (OSError: [Errno 28] No space "
                    "left on device); tensorboard is off for the rest of the run")
    assert len(calls) == 1  # never called again after the failure
    assert [r["step"] for r in outputs.read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert (out / "checkpoint-last.pt").exists()


def test_a_failing_wandb_log_is_one_warning_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    import wandb
    monkeypatch.delenv("WANDB_MODE", raising=False)
    calls = []

    def broken(self, *a, **k):
        calls.append(1)
        raise RuntimeError("the wandb service went away")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    out = tmp_path / "wb"
    assert train.main(BASE + ["--log-every", "1", "--wandb", "--output-dir", str(out)]) == 0
    (line,) = _warnings(capsys.readouterr().err)
    assert line == ("mmae-train: WARNING wandb logging failed (RuntimeError: the wandb service "
                    "went away); wandb is off for the rest of the run")
    assert len(calls) == 1
    assert [r["step"] for r in outputs.read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]


def _args(tmp_path, **kw):
    return argparse.Namespace(**({"output_dir": str(tmp_path), "tensorboard": False,
                                  "wandb": False, "wandb_project": "p", "wandb_name": None}
                                 | kw))


@pytest.mark.parametrize("error", [ValueError("invalid project name 'a/b'"),
                                   OSError(28, "No space left on device")])
def test_a_failing_wandb_init_is_one_warning(tmp_path, capsys, monkeypatch, error):
    import wandb

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(wandb, "init", fail)
    t = track.Trackers(_args(tmp_path, wandb=True), group="train", prog="mmae-train")
    t.log({"loss": 1.0, "epoch": 0.5}, 0)
    t.images({"curves": __file__})
    t.close()
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith(f"mmae-train: WARNING wandb logging failed ({type(error).__name__}: ")
    assert not t.active


def test_only_rank_0_tracks(tmp_path):
    t = track.Trackers(_args(tmp_path, tensorboard=True, wandb=True), group="train",
                       prog="mmae-train", rank=1)
    t.log({"loss": 1.0}, 0)
    t.close()
    assert not t.active and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- health values
def _independent_spectrum(h: np.ndarray, mu: float) -> dict:
    """numpy float64: R by slogdet of A = I_d + mu/d ZᵀZ, cond(A) and the top-eigenvalue share
    of ZZᵀ by eigvalsh of the dense matrices."""
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    m, d = z.shape
    a = np.eye(d) + mu / d * z.T @ z
    sign, logdet = np.linalg.slogdet(a)
    assert sign > 0
    ev_a = np.linalg.eigvalsh(a)
    ev_k = np.linalg.eigvalsh(z @ z.T)
    return {"tcr_R": -logdet, "coding_rate": logdet, "cond_A": ev_a[-1] / ev_a[0],
            "kappa_bound": 1 + mu * m / d, "top_eig_share": ev_k[-1] / np.trace(z @ z.T)}


@pytest.mark.parametrize("m, d, mu, collapse", [(16, 64, 1.0, 0.0), (96, 32, 3.0, 0.0),
                                                (32, 32, 0.5, 0.0), (40, 24, 2.0, 0.9)])
def test_spectrum_matches_numpy(m, d, mu, collapse):
    rng = np.random.default_rng(m * d)
    h = rng.standard_normal((m, d)) + collapse * 10 * rng.standard_normal(d)  # a shared direction
    got = dict(zip(health.SPECTRUM, health.spectrum(torch.tensor(h, dtype=torch.float32),
                                                    mu).tolist()))
    want = _independent_spectrum(h.astype(np.float32).astype(np.float64), mu)
    for key in health.SPECTRUM:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert 1 <= got["cond_A"] <= got["kappa_bound"]


def test_spectrum_of_non_finite_features_is_nan_without_an_exception():
    h = torch.randn(8, 16)
    h[3, 2] = math.nan
    assert all(math.isnan(v) for v in health.spectrum(h, 1.0).tolist())


def test_collapsed_features_reach_the_a_priori_bound():
    h = torch.ones(12, 8)  # every row the same unit vector: ZᵀZ = m·uuᵀ
    got = dict(zip(health.SPECTRUM, health.spectrum(h, 2.0).tolist()))
    assert got["cond_A"] == pytest.approx(1 + 2.0 * 12 / 8) == got["kappa_bound"]
    assert got["top_eig_share"] == pytest.approx(1.0)


def _grad_norms_by_hand(model, micro, s0, parts_of):
    """Each term on its own: a fresh copy of the model, the RNG state s0, a backward of
    term / accum over every micro-batch, the norm of the accumulated .grad."""
    norms = []
    for i in range(3):
        m = copy.deepcopy(model)
        torch.set_rng_state(s0)
        for imgs, noise, labels in micro:
            parts_of(m, imgs, noise, labels)[i].div(len(micro)).backward()
        grads = [p.grad.flatten() for p in m.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).double().norm()))
    return norms


def test_term_grad_norms_are_each_terms_own_gradient_norm():
    """drop path (RNG replayed), a BatchNorm online head (buffers restored), two micro-batches:
    the norms equal those of each term backpropagated alone, and term_grad_norms leaves the RNG
    and the model's buffers as it found them."""
    args, model, opt, scaler, fwd, batches = _setup(
        ["--reg", "tcr", "--online-head", "bn-linear", "--accum-iter", "2", "--drop-path", "0.2"])
    reg_fn = loop.regularisers.build(args, None, 1)

    def parts_of(m, imgs, noise, labels):
        loss_mae, loss_reg, loss_ce = step.loss_terms(m, imgs, noise, labels, reg_fn=reg_fn,
                                                      amp_dtype=None)
        return loss_mae, args.lamb * loss_reg, loss_ce

    micro = batches[0]
    model.train()
    buffers = [b.clone() for b in model.buffers()]
    s0 = torch.get_rng_state()
    got = health.term_grad_norms(model, micro, lamb=args.lamb, scaler=scaler,
                                 loss_terms=lambda m, i, n, y: step.loss_terms(
                                     m, i, n, y, reg_fn=reg_fn, amp_dtype=None)).tolist()
    assert torch.equal(torch.get_rng_state(), s0)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated
    want = _grad_norms_by_hand(model, micro, s0, parts_of)
    assert got == pytest.approx(want, rel=1e-4)  # float32 sums in another order
    assert want[1] != pytest.approx(want[0], rel=0.1)  # the terms differ: a swap would show


@pytest.mark.parametrize("extra, none", [(["--reg", "none"], "grad_norm_reg"),
                                         (["--no-online-head"], "grad_norm_ce")])
def test_grad_norms_at_the_steps_asked_and_none_for_an_absent_term(tmp_path, extra, none):
    out = tmp_path / "g"
    assert train.main(BASE + ["--log-every", "1", "--grad-norm-every", "3", "--no-plot",
                              "--output-dir", str(out), *extra]) == 0
    rows = outputs.read_metrics(out / "metrics.jsonl")
    have = [r["step"] for r in rows if r["grad_norm_mae"] is not None]
    assert have == [2, 3]  # step index 2 (3 steps done) and the last
    assert all(r[none] is None for r in rows)
    assert all(r["tcr_R"] is not None for r in rows)  # the spectrum: every log step

