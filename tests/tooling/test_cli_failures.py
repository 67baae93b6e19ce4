"""Every entry point ends a user-caused failure in one line on stderr, naming the cause and the
fix, with exit code 2 (1 for a diverged run), never a traceback.

Each row of ``FAILURES`` plants its fault (a flag value, an unwritable path below a file, a
truncated image, a checkpoint of NaN weights) and runs the entry point's ``main`` in-process.
"""
import re

import pytest
import torch

from mmae_fast import bench_cli, train
from mmae_fast.eval import cli as eval_cli, export
from mmae_fast.train import demo

MAINS = {"mmae-train": train.main, "mmae-eval": eval_cli.main, "mmae-export": export.main,
         "mmae-demo": demo.main, "mmae-bench": bench_cli.main}

TRAIN = ["--model", "tiny", "--data", "digits", "--batch", "8", "--steps", "2", "--device",
         "cpu", "--no-progress", "--no-plot", "--no-export", "--output-dir", "{out}"]
#: a probe run small enough for a row: 40 digits, one epoch without warmup
PROBE = ["--epochs", "1", "--warmup-epochs", "0", "--batch", "8", "--workers", "0",
         "--device", "cpu", "--output-dir", "{out}"]
MONITOR = ["--probe-epochs", "1", "--device", "cpu"]
BENCH = ["entropy", "--quick", "--no-progress", "--m", "8", "--d", "4", "--out", "{out}"]

#: (id, entry point, argv, exit code, regular expression the one stderr line must match).
#: Placeholders: {ck} a tiny checkpoint, {nan} the same with NaN weights, {file} a plain file
#: (a path below it cannot be created), {bad_val} / {bad_train} image folders with one
#: truncated PNG in val/ / train/, {out} a fresh output directory.
FAILURES = [
    # mmae-train
    ("train-mask-ratio-0", "mmae-train", TRAIN + ["--mask-ratio", "0"], 2,
     r"--mask-ratio must be in \(0, 1\) .*e\.g\. 0\.75"),
    ("train-mask-ratio-masks-nothing", "mmae-train", TRAIN + ["--mask-ratio", "1e-17"], 2,
     r"--mask-ratio 1e-17 masks none of the 16 patches .*give a larger ratio"),
    ("train-drop-path-2", "mmae-train", TRAIN + ["--drop-path", "2"], 2,
     r"--drop-path is a probability: give a value in \[0, 1\)"),
    ("train-min-lr-above-lr", "mmae-train", TRAIN + ["--lr", "1e-4", "--min-lr", "1"], 2,
     r"--min-lr 1 is above the peak lr 0\.0001 .*give --min-lr <= 0\.0001"),
    ("train-min-lr-above-blr-lr", "mmae-train", TRAIN + ["--blr", "1e-4", "--min-lr", "1"], 2,
     r"--min-lr 1 is above the peak lr 3\.125e-06"),
    ("train-bn-head-batch-1", "mmae-train",
     TRAIN + ["--batch", "1", "--online-head", "bn-linear"], 2,
     r"--online-head bn-linear .* needs --batch >= 2; raise --batch or use --online-head linear"),
    ("train-output-dir-below-a-file", "mmae-train",
     TRAIN + ["--output-dir", "{file}/run"], 2, r"--output-dir '.*/file/run': cannot write there"),
    ("train-bad-int", "mmae-train", TRAIN + ["--batch", "many"], 2,
     r"mmae-train: error: argument --batch: invalid int value: 'many'"),
    ("train-unknown-flag", "mmae-train", TRAIN + ["--bogus"], 2,
     r"mmae-train: error: unrecognized arguments: --bogus"),
    ("train-diverged", "mmae-train", TRAIN + ["--lr", "1e30", "--steps", "3"], 1,
     r"^mmae-train: diverged: non-finite loss at step \d"),
    # mmae-eval
    ("monitor-max-images-1", "mmae-eval", ["monitor", "{ck}", "--max-images", "1"] + MONITOR, 2,
     r"--max-images must be >= 2"),
    ("monitor-workers-negative", "mmae-eval", ["monitor", "{ck}", "--workers", "-1"] + MONITOR,
     2, r"--workers must be >= 0, got -1"),
    ("monitor-nan-weights", "mmae-eval", ["monitor", "{nan}", "--max-images", "20"] + MONITOR, 2,
     r"not finite|NaN|non-finite"),
    ("monitor-truncated-val-image", "mmae-eval",
     ["monitor", "{ck}", "--data-path", "{bad_val}"] + MONITOR, 2,
     r"bad_val/val/cat/1\.png: not a decodable image \(.*\); remove or replace it"),
    ("linprobe-truncated-val-image", "mmae-eval",
     ["linprobe", "{ck}", "--data-path", "{bad_val}"] + PROBE + ["--batch", "6"], 2,
     r"bad_val/val/cat/1\.png: not a decodable image"),
    ("linprobe-truncated-train-image-in-a-worker", "mmae-eval",
     ["linprobe", "{ck}", "--data-path", "{bad_train}"] + PROBE + ["--batch", "6",
                                                                  "--workers", "1"],
     2, r"bad_train/train/cat/1\.png: not a decodable image"),
    ("linprobe-output-dir-below-a-file", "mmae-eval",
     ["linprobe", "{ck}", "--max-images", "40"] + PROBE + ["--output-dir", "{file}/o"], 2,
     r"--output-dir '.*/file/o': cannot create it \(.*\); give a writable directory"),
    ("linprobe-min-lr-above-lr", "mmae-eval",
     ["linprobe", "{ck}", "--max-images", "40", "--lr", "0.1", "--min-lr", "1"] + PROBE, 2,
     r"--min-lr 1 is above the peak lr 0\.1"),
    ("linprobe-nan-weights", "mmae-eval", ["linprobe", "{nan}", "--max-images", "40"] + PROBE, 2,
     r"not finite|NaN|non-finite"),
    ("linprobe-diverged", "mmae-eval",
     ["linprobe", "{ck}", "--max-images", "40", "--lr", "1e30"] + PROBE, 1,
     r"^mmae-eval linprobe: diverged: non-finite training loss .* lower --blr / --lr"),
    ("finetune-nan-weights", "mmae-eval", ["finetune", "{nan}", "--max-images", "40", "--aa", "",
                                           "--mixup", "0", "--cutmix", "0"] + PROBE, 2,
     r"not finite|NaN|non-finite"),
    ("finetune-bogus-aa", "mmae-eval",
     ["finetune", "{ck}", "--max-images", "40", "--aa", "bogus"] + PROBE, 2,
     r"--aa 'bogus' is not a timm auto-augment policy .*'' for none"),
    ("eval-not-a-checkpoint", "mmae-eval", ["monitor", "{file}"] + MONITOR, 2, r"/file"),
    # mmae-export
    ("export-output-below-a-file", "mmae-export", ["{ck}", "-o", "{file}/x.safetensors"], 2,
     r"--output: cannot write '.*/file.*' \(.*\); give -o a path in a writable directory"),
    ("export-output-suffix", "mmae-export", ["{ck}", "-o", "{out}/x.txt"], 2,
     r"end it in \.safetensors, \.pt or \.pth"),
    # mmae-demo
    ("demo-out-below-a-file", "mmae-demo", ["--steps", "1", "--out", "{file}/demo"], 2,
     r"--out '.*/file/demo': cannot create it"),
    ("demo-steps-0", "mmae-demo", ["--steps", "0", "--out", "{out}"], 2,
     r"--steps must be >= 1"),
    # mmae-bench
    ("bench-out-below-a-file", "mmae-bench", BENCH[:-1] + ["{file}/b"], 2,
     r"mmae-bench entropy: error: --out '.*/file/b': cannot create it"),
    ("bench-m-0", "mmae-bench", BENCH + ["--m", "0"], 2, r"--m values must be >= 1, got 0"),
    ("bench-d-negative", "mmae-bench", BENCH + ["--d", "-1"], 2,
     r"--d values must be >= 1, got -1"),
    ("bench-mu-0", "mmae-bench", BENCH + ["--mu", "0"], 2, r"--mu must be a finite number > 0"),
    ("bench-mu-nan", "mmae-bench", BENCH + ["--mu", "nan"], 2,
     r"--mu must be a finite number > 0, got nan"),
    ("bench-tol-0", "mmae-bench", BENCH + ["--tol", "0"], 2, r"give 0 < tol < 1"),
    ("bench-tol-1", "mmae-bench", BENCH + ["--tol", "1"], 2, r"give 0 < tol < 1"),
    ("bench-reps-0", "mmae-bench", BENCH + ["--reps", "0"], 2, r"--reps must be >= 1, got 0"),
    ("bench-train-steps-0", "mmae-bench", ["train", "--quick", "--steps", "0", "--out", "{out}"],
     2, r"mmae-bench train: error: --steps must be >= 1, got 0"),
    ("bench-unknown-command", "mmae-bench", ["nope"], 2,
     r"unknown command 'nope'; choose one of entropy, train, plot"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The planted faults, made once: checkpoints, a plain file, image folders with one
    truncated PNG."""
    from eval_helpers import image_folder, mae_checkpoint
    root = tmp_path_factory.mktemp("cli_failures")
    ck, nan = root / "ck.pt", root / "nan.pt"
    mae_checkpoint(ck)
    state = torch.load(ck, weights_only=True)
    state["model"] = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, nan)
    (root / "file").write_text("not a directory, not a checkpoint\n")
    paths = {"ck": ck, "nan": nan, "file": root / "file"}
    for name, split in (("bad_val", "val"), ("bad_train", "train")):
        folder = image_folder(root / name)
        png = folder / split / "cat" / "1.png"
        png.write_bytes(png.read_bytes()[:60])  # the header survives, the pixels do not
        paths[name] = folder
    return {k: str(v) for k, v in paths.items()}


def call(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the entry point's main run in-process."""
    capsys.readouterr()
    try:
        code = MAINS[entry](argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("entry, argv, code, pattern",
                         [row[1:] for row in FAILURES], ids=[row[0] for row in FAILURES])
def test_a_user_caused_failure_is_one_line(inputs, tmp_path, capsys, entry, argv, code,
                                           pattern):
    argv = [a.format(out=str(tmp_path / "out"), **inputs) for a in argv]
    got, err = call(entry, argv, capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert got == code and len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith(entry), lines[0]


def test_an_undecodable_val_image_stops_the_probe_before_it_trains(inputs, tmp_path, capsys):
    """val/ is first read after an epoch: it is decoded before training, so nothing is written."""
    out = tmp_path / "out"
    argv = ["linprobe", inputs["ck"], "--data-path", inputs["bad_val"], *PROBE, "--batch", "6"]
    code, err = call("mmae-eval", [a.format(out=str(out)) for a in argv], capsys)
    assert code == 2 and "not a decodable image" in err
    assert not (out / "log.jsonl").exists() and not (out / "checkpoint-last.pt").exists()


def test_a_warmup_not_shorter_than_the_probe_is_one_warning(inputs, tmp_path, capsys):
    argv = ["linprobe", inputs["ck"], "--max-images", "40", *PROBE, "--warmup-epochs", "2"]
    code, err = call("mmae-eval", [a.format(out=str(tmp_path / "o")) for a in argv], capsys)
    assert code == 0
    assert err.strip() == ("mmae-eval: WARNING --warmup-epochs 2 is not shorter than --epochs 1: "
                           "the lr never reaches its peak 0.0015625; give --warmup-epochs below "
                           "--epochs")
