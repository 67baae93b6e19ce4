"""mmae-eval linprobe: official defaults, LARS as MAE's, end to end on digits and an image
folder, exact resume, clear data errors."""
import json
import math

import pytest
import torch
import torch.nn as nn

from eval_helpers import image_folder, mae_checkpoint
from mmae_fast.eval import common, data as edata, linprobe


def _args(ckpt, out, *extra):
    return linprobe.build_parser().parse_args(
        [str(ckpt), "--output-dir", str(out), "--device", "cpu", "--workers", "0", *extra])


def test_defaults_are_the_official_settings(tmp_path):
    a = _args("x.pt", tmp_path)
    assert (a.epochs, a.warmup_epochs, a.batch, a.blr, a.weight_decay, a.min_lr) == \
        (90, 10, 8192, 0.05, 0.0, 0.0)
    assert a.max_images is None  # every image
    common.check_common(a, common.Env("cpu"))
    assert a.lr == pytest.approx(0.05 * 8192 / 256) and a.batch_per_rank == 8192


def _mae_lars_reference(params, grads, bufs, lr, wd):
    """MAE util/lars.py, written out: matrices get wd and the trust ratio, vectors neither.
    MAE's ratio is ``1e-3·‖p‖/‖g + wd·p‖``; timm's (the LARS paper's) ``1e-3·‖p‖/(‖g‖ +
    wd·‖p‖)``: the same at the protocol's wd = 0; for wd > 0 the paper's form is checked."""
    for p, g, i in zip(params, grads, range(len(params))):
        dp = g.clone()
        if p.ndim > 1:
            dp = dp + wd * p
            pn, un = p.norm(), (dp.norm() if wd == 0 else g.norm() + wd * p.norm())
            guard = un if wd == 0 else g.norm()  # timm tests ‖g‖ > 0, MAE ‖g + wd·p‖ > 0
            q = 1e-3 * pn / un if pn > 0 and guard > 0 else torch.tensor(1.0, dtype=p.dtype)
            dp = dp * q
        bufs[i] = dp if bufs[i] is None else 0.9 * bufs[i] + dp
        p -= lr * bufs[i]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lars_is_maes_lars_on_a_toy_problem(gen, wd):
    torch.set_default_dtype(torch.float64)
    try:
        net = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))
        with torch.no_grad():
            net[1].weight.zero_()  # a zero-norm matrix: trust ratio 1
        ref = [p.detach().clone() for p in net.parameters()]
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 2, generator=gen)
        opt = linprobe.lars(net, lr=2.0, weight_decay=wd)
        bufs = [None] * len(ref)
        for _ in range(4):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            grads = [p.grad.clone() for p in net.parameters()]
            opt.step()
            _mae_lars_reference(ref, grads, bufs, 2.0, wd)
            for p, r in zip(net.parameters(), ref):
                torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-14)
    finally:
        torch.set_default_dtype(torch.float32)


def test_digit_split_is_the_trainers():
    from mmae_fast.mae import data as train_data
    _, y = train_data.load_digits(16, "test")
    assert edata.DigitsImages("val").targets == y.tolist()


def _independent_top1(mae, head_state, n):
    """Top-1 (%) of the saved probe on the first-n-evenly-spaced val digits, from the trainer's
    own encoder (CLS after one norm) and a transform written out here."""
    from torchvision import transforms as T
    tf = T.Compose([T.Resize(18, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16),
                    T.ToTensor(), T.Normalize(edata.MEAN, edata.STD)])
    ds = edata.DigitsImages("val")
    idx = torch.linspace(0, len(ds) - 1, n).round().long().tolist() if n else range(len(ds))
    x = torch.stack([tf(ds[i][0]) for i in idx])
    y = torch.tensor([ds[i][1] for i in idx])
    head = nn.Sequential(nn.BatchNorm1d(64, affine=False, eps=1e-6), nn.Linear(64, 10))
    head.load_state_dict(head_state)
    with torch.no_grad():
        cls = mae.forward_encoder(x, mask=False)[0][:, 0]
        return 100.0 * float((head.eval()(cls).argmax(1) == y).float().mean())


@pytest.mark.slow  # essential: resume / DDP / trainer integration
def test_digits_end_to_end_and_resume_is_exact(tmp_path):
    mae = mae_checkpoint(tmp_path / "ck.pt")
    common_args = ("--epochs", "2", "--warmup-epochs", "1", "--batch", "32", "--max-images",
                   "96", "--blr", "40")
    full = linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "full", *common_args))
    part = linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "part", *common_args,
                              "--stop-after", "1"))
    assert (part["start_epoch"], part["end_epoch"]) == (0, 1)
    rest = linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "part", *common_args,
                              "--resume", "auto"))
    assert (rest["start_epoch"], rest["end_epoch"]) == (1, 2)
    assert rest["history"] == full["history"]
    s_full = torch.load(full["checkpoint"], weights_only=True)
    s_rest = torch.load(rest["checkpoint"], weights_only=True)
    for k, v in s_full["head"].items():
        assert torch.equal(v, s_rest["head"][k]), k
    last = full["history"][-1]
    assert last["n"] == 96 and 0 <= last["top5"] <= 100 and last["top1"] <= last["top5"]
    assert math.isclose(last["top1"], _independent_top1(mae, s_full["head"], 96), abs_tol=1.1)
    log = [json.loads(r) for r in open(tmp_path / "part" / "log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1]


def test_image_folder_and_a_missing_val_folder(tmp_path, capsys):
    mae_checkpoint(tmp_path / "ck.pt")
    root = image_folder(tmp_path / "imgs")
    res = linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "lp", "--data", "imagefolder",
                             "--data-path", str(root), "--epochs", "1", "--batch", "6"))
    assert res["history"][0]["n"] == 6  # 3 classes x 2 val images, each counted once
    import shutil
    shutil.rmtree(root / "val" / "eel")
    with pytest.raises(ValueError, match="same class folders"):
        linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "lp2", "--data", "imagefolder",
                           "--data-path", str(root)))
    shutil.rmtree(root / "val")
    with pytest.raises(ValueError, match="no val/ folder"):
        linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "lp2", "--data", "imagefolder",
                           "--data-path", str(root)))
    from mmae_fast.eval import cli
    with pytest.raises(SystemExit):
        cli.main(["linprobe", str(tmp_path / "ck.pt"), "--output-dir", str(tmp_path / "o"),
                       "--data", "imagefolder", "--data-path", str(root)])
    assert "no val/ folder" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (("--batch", "30", "--accum-iter", "4"), "multiple of"),
    (("--epochs", "0"), "--epochs"),
    (("--data", "imagenet"), "--data must be one of"),
    (("--data", "imagefolder"), "needs --data-path"),
])
def test_bad_arguments_name_the_argument(tmp_path, extra, match):
    mae_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ValueError, match=match):
        linprobe.run(_args(tmp_path / "ck.pt", tmp_path / "o", *extra))


@pytest.mark.slow  # essential: resume / DDP / trainer integration
def test_two_gloo_ranks_run_and_count_every_val_image_once(tmp_path):
    """torchrun with 2 CPU ranks: DistributedSampler shards, DDP head, exact summed counts."""
    import os
    import subprocess
    import sys
    mae = mae_checkpoint(tmp_path / "ck.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mmae_fast.eval", "linprobe", str(tmp_path / "ck.pt"), "--output-dir",
         str(out), "--device", "cpu", "--workers", "0", "--epochs", "1", "--batch", "32",
         "--max-images", "65"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(r) for r in open(out / "log.jsonl")]
    assert len(rows) == 1 and rows[0]["n"] == 65  # odd count: no padding, no double counting
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["args"]["batch_per_rank"] == 16 and state["epoch"] == 1
    assert math.isclose(rows[0]["top1"], _independent_top1(mae, state["head"], 65), abs_tol=1.6)
