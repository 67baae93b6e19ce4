"""The trainer: argument checks, loss goes down, exact resume, DDP = one process, outputs."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mmae_fast import train
from mmae_fast.eval import cli, monitor
from mmae_fast.mae import checkpoint, data

BASE = ["--model", "tiny", "--data", "digits", "--batch", "16", "--lr", "2e-3",
        "--warmup-steps", "2", "--log-every", "1", "--rank-every", "2", "--no-progress",
        "--device", "cpu"]


def run(tmp_path, name, *extra):
    args = train.parse_args(BASE + ["--output-dir", str(tmp_path / name), *extra])
    return train.train(args)


def metrics(result):
    return train.read_metrics(os.path.join(result["run_dir"], "metrics.jsonl"))


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("argv, match", [
    (["--model", "vit_small"], "--model: unknown preset 'vit_small'"),
    (["--data", "imagefolder"], "--data imagefolder needs --data-path"),
    (["--data", "imagefolder", "--data-path", "/no/such/dir"], "--data-path .* not a directory"),
    (["--data", "cifar"], "--data must be one of"),
    (["--data", "digits", "--data-path", "/tmp"], "--data-path '/tmp' is read only by --data "
                                                   "imagefolder, not --data digits"),
    (["--data", "synthetic", "--data-path", "/tmp", "--steps", "2"], "read only by --data "
                                                                    "imagefolder"),
    (["--lamb", "-0.1"], "--lamb must be >= 0"),
    (["--mu", "0"], "--mu must be > 0"),
    (["--reg", "tcr2"], "--reg must be one of"),
    (["--estimator", "lu"], "--estimator must be one of"),
    (["--grad-semantics", "mean"], "--grad-semantics must be one of"),
    (["--backend", "official-eager", "--reg", "uniformity"], "official-eager is a TCR loss"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--img-size", "18"], "--img-size \\(18\\) must be a multiple of the patch size 4"),
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--warmup-steps", "3", "--warmup-epochs", "1"], "not both"),
    (["--data", "synthetic"], "--data synthetic has no epochs; give --steps"),
    (["--cls-norm", "double"], "renamed: 'shared' is the official"),
    (["--online-head", "mlp"], "--online-head must be one of"),
    (["--data-pipeline", "dali"], "--data-pipeline must be one of"),
    (["--recipe", "mmae-vitb"], "--recipe must be one of"),
    (["--device", "cuda:abc"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--device", "auto:1"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_arguments_name_the_argument(argv, match):
    with pytest.raises(ValueError, match=match):
        train.parse_args(argv)


def test_cli_reports_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--lamb", "-1"])
    assert exc.value.code == 2
    assert "--lamb must be >= 0" in capsys.readouterr().err


def test_an_unwritable_output_dir_is_one_line_naming_it(tmp_path, capsys):
    """--output-dir below a file (as /dev/null/x): NotADirectoryError becomes one line."""
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / "run")
    assert train.main(BASE + ["--steps", "1", "--output-dir", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--output-dir {out!r}: cannot write there" in err, err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_only_rank_0_prints_a_shared_error(monkeypatch, capsys, rank):
    """Every rank exits non-zero; a divergence or a bad --resume (the same on every rank) is
    printed once, by rank 0; a bad image file (each rank reads its own) by the rank that hit
    it; a bad flag once, with usage."""
    from mmae_fast.mae.gpu_pipeline import BadImage
    monkeypatch.setenv("RANK", rank)
    for exc, code, printed in ((train.Diverged("diverged: x"), 1, rank == "0"),
                               (ValueError("--resume 'x.pt': y"), 2, rank == "0"),
                               (BadImage("d/a.jpg: not a decodable image"), 2, True)):
        def fail(args, exc=exc):
            raise exc
        monkeypatch.setattr(train, "train", fail)
        assert train.main(BASE + ["--steps", "1"]) == code
        err = capsys.readouterr().err.strip()
        assert (err == f"mmae-train: {'error: ' * (code == 2)}{exc}") if printed else err == ""
    if rank == "0":
        with pytest.raises(SystemExit) as stop:
            train.main(["--lamb", "-1"])
        assert stop.value.code == 2 and "--lamb must be >= 0" in capsys.readouterr().err
    else:
        assert train.main(["--lamb", "-1"]) == 2 and capsys.readouterr().err == ""


def test_global_batch_larger_than_data_is_an_error():
    with pytest.raises(ValueError, match="global batch .* exceeds the data set size"):
        data.build("digits", img_size=16, batch_per_rank=5000, seed=0)


def test_lr_schedule():
    lrs = [train.lr_at(s, 20, 5, 1.0, 0.1) for s in range(20)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))


def test_data_order_is_a_function_of_the_step():
    a = data.build("digits", img_size=16, batch_per_rank=8, seed=3)
    b = data.build("digits", img_size=16, batch_per_rank=4, seed=3, rank=1, world=2)
    for step in (0, 5, a.steps_per_epoch + 2):
        torch.testing.assert_close(a.batch(step)[0][4:], b.batch(step)[0])
    epoch0 = torch.cat([a.indices(s) for s in range(a.steps_per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0)  # no repeats within an epoch


# ----------------------------------------------------------------------------- training
def test_loss_decreases_and_outputs_are_written(tmp_path):
    res = run(tmp_path, "tcr", "--steps", "10", "--reg", "tcr", "--lamb", "0.1")
    rows = metrics(res)
    assert [r["step"] for r in rows] == list(range(10))
    first, last = rows[0], rows[-1]
    assert last["loss_mae"] < first["loss_mae"]
    assert last["loss"] < first["loss"]
    for key in ("lr", "loss_reg", "loss_ce", "online_acc", "img_per_s"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in rows), key
    assert rows[1]["eff_rank"] is not None and rows[0]["eff_rank"] is None
    for name in ("curves.png", "encoder.safetensors", "encoder.json", "args.json",
                 checkpoint.LAST):
        assert os.path.getsize(os.path.join(res["run_dir"], name)) > 0, name
    assert not [f for f in os.listdir(res["run_dir"]) if f.startswith(".tmp")]


def test_resume_gives_the_uninterrupted_loss_sequence(tmp_path):
    extra = ["--steps", "6", "--reg", "tcr", "--lamb", "0.5", "--drop-path", "0.1"]
    whole = run(tmp_path, "whole", *extra)
    part1 = run(tmp_path, "split", *extra, "--stop-after", "3")
    assert part1["end_step"] == 3 and part1["encoder"] is None
    state = torch.load(part1["checkpoint"], weights_only=True)
    assert state["step"] == 3
    part2 = run(tmp_path, "split", *extra, "--resume", "auto")
    assert part2["start_step"] == 3
    torch.testing.assert_close(torch.tensor(part1["losses"] + part2["losses"]),
                               torch.tensor(whole["losses"]), rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in metrics(part2)] == list(range(6))
    for a, b in zip(whole["model"].state_dict().values(), part2["model"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resume_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--resume: no checkpoint file"):
        run(tmp_path, "x", "--steps", "1", "--resume", str(tmp_path / "nope.pt"))


def test_gradient_accumulation_matches_a_full_batch(tmp_path):
    """2 micro-batches of 8 = 1 batch of 16 (same rows, masks, LR). Without a regulariser (R
    is per micro-batch) and the online head (its BatchNorm sees each micro-batch)."""
    common = ["--steps", "3", "--reg", "none", "--no-online-head", "--no-export", "--no-plot"]
    full = run(tmp_path, "full", *common)
    accum = train.train(train.parse_args(
        [a if a != "16" else "8" for a in BASE] +
        ["--output-dir", str(tmp_path / "accum"), "--accum-iter", "2", *common]))
    torch.testing.assert_close(torch.tensor(accum["losses"]), torch.tensor(full["losses"]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [
    ["--reg", "none"], ["--reg", "uniformity"], ["--backend", "official-eager"],
    ["--estimator", "series", "--centering", "--cls-norm", "shared"],
    ["--cls-norm", "separate", "--online-head", "bn-linear"],
    ["--data", "synthetic", "--img-size", "32"],
])
def test_other_configurations_run(tmp_path, extra):
    res = run(tmp_path, "x", "--steps", "2", "--no-export", "--no-plot", *extra)
    assert len(res["losses"]) == 2 and all(math.isfinite(v) for v in res["losses"])
    row = metrics(res)[0]
    assert (row["loss_reg"] is None) == ("none" in extra)
    assert (row["loss_ce"] is None) == ("synthetic" in extra)


@pytest.mark.parametrize("reg", ["tcr", "uniformity"])
def test_ddp_two_processes_match_one(tmp_path, reg):
    """torchrun, 2 gloo ranks x 8 images = 1 process x 16 images: same loss sequence (the
    Gram all-reduce makes R the global-batch R, tcr_loss(group=...) and the gathered U-MAE
    uniformity; exact gradient semantics); the per-term gradient norms of every step too
    (each term's gradient averaged over the ranks, as DDP averages the step's)."""
    common = ["--steps", "3", "--reg", reg, "--lamb", "2", "--no-online-head",
              "--no-export", "--no-plot", "--threads", "1", "--grad-norm-every", "1"]
    single = run(tmp_path, "single", *common)
    argv = [a if a != "16" else "8" for a in BASE] + ["--output-dir", str(tmp_path / "ddp"),
                                                      *common]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "mmae_fast.train", *argv],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = train.read_metrics(str(tmp_path / "ddp" / "metrics.jsonl"))
    one = metrics(single)
    assert all(r["grad_norm_mae"] > 0 and r["grad_norm_reg"] > 0 for r in ddp)
    for key in ("loss", "loss_mae", "loss_reg", "grad_norm_mae", "grad_norm_reg"):
        torch.testing.assert_close(torch.tensor([r[key] for r in ddp]),
                                   torch.tensor([r[key] for r in one]), rtol=1e-4, atol=1e-5)
    assert json.load(open(tmp_path / "ddp" / "args.json"))["world_size"] == 2


# ----------------------------------------------------------------------------- evaluation
def test_probes_separate_separable_features(gen):
    centers = torch.randn(4, 16, generator=gen) * 4
    y = torch.arange(200) % 4
    f = centers[y] + torch.randn(200, 16, generator=gen)
    acc = monitor.linear_probe(f[:150], y[:150], f[150:], y[150:], epochs=30)
    assert acc > 0.95
    assert monitor.knn_accuracy(f[:150], y[:150], f[150:], y[150:], k=5) > 0.95
    # random labels cannot be predicted
    shuffled = y[torch.randperm(200, generator=gen)]
    assert monitor.knn_accuracy(torch.randn(150, 16, generator=gen), shuffled[:150],
                                 torch.randn(50, 16, generator=gen), shuffled[150:]) < 0.6


def test_evaluate_cli_on_a_checkpoint(tmp_path, capsys):
    res = run(tmp_path, "ev", "--steps", "2", "--no-export", "--no-plot")
    assert cli.main([res["checkpoint"], "--probe-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "linear acc" in out and "eff. rank" in out and "ev" in out


def test_demo_smoke(tmp_path, capsys):
    from mmae_fast.train import demo
    assert demo.main(["--steps", "2", "--probe-epochs", "1", "--jobs", "1",
                      "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "reg=tcr" in out and "reg=none" in out and "linear-probe acc" in out
    summary = json.load(open(tmp_path / "demo" / "summary.json"))
    assert [r["reg"] for r in summary["runs"]] == ["tcr", "none"]
    assert os.path.getsize(tmp_path / "demo" / "compare.png") > 0


# ----------------------------------------------------------------------------- image folders
def _image_folder(root, per_class=6):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(per_class):
                px = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_batches_are_resumable(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    kw = dict(img_size=16, batch_per_rank=4, seed=1, data_path=str(root), workers=0)
    seq = data.build("imagefolder", **kw)
    b0, b1 = seq.batch(0), seq.batch(1)
    fresh = data.build("imagefolder", **kw).batch(1)  # a resumed run starts at step 1
    torch.testing.assert_close(fresh[0], b1[0])
    assert torch.equal(fresh[1], b1[1]) and b0[0].shape == (4, 3, 16, 16)
    assert not torch.equal(b0[0], b1[0])
    xtr, ytr, xte, yte = data.eval_arrays("imagefolder", 16, str(root))
    assert xtr.shape == (12, 3, 16, 16) and sorted(set(yte.tolist())) == [0, 1]


def test_train_on_an_image_folder(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    res = train.train(train.parse_args(
        ["--data", "imagefolder", "--data-path", str(root), "--workers", "0", "--batch", "4",
         "--steps", "2", "--no-progress", "--no-plot", "--device", "cpu",
         "--output-dir", str(tmp_path / "run")]))
    assert len(res["losses"]) == 2 and res["model"].num_classes == 2


def test_a_data_path_alone_means_that_folder(tmp_path):
    """--data-path without --data trains on the folder (imagefolder), never on digits."""
    args = train.parse_args(["--data-path", str(tmp_path), "--output-dir", str(tmp_path / "o")])
    assert args.data == "imagefolder"
    assert train.parse_args(["--output-dir", str(tmp_path / "o")]).data == "digits"


def test_the_resolved_backend_is_printed_and_stored(tmp_path, capsys):
    res = run(tmp_path, "backend", "--steps", "1", "--reg", "tcr")
    out = capsys.readouterr().out
    assert "R = tcr_loss on the 'cpu' backend (--backend auto)" in out
    saved = json.load(open(os.path.join(res["run_dir"], "args.json")))
    assert saved["backend"] == "auto" and saved["resolved_backend"] == "cpu"
    none = run(tmp_path, "none", "--steps", "1", "--reg", "none")
    assert json.load(open(os.path.join(none["run_dir"], "args.json")))["resolved_backend"] == "none"
