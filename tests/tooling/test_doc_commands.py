"""Every ```bash block of README.md and docs/*.md runs as printed on the CPU, or says why not.

The rule for a doc writer:

- A ```bash block whose first line is ``# doc-test: skip (REASON)`` is not run; REASON says why
  (``gpu-only``, ``long``, ``installs packages``, ``starts a server``, ...). Every other ```bash
  block is run by this test, command by command (``\\`` continuations joined, comment lines
  dropped), in a fresh temporary directory, after the substitutions below; it fails if a
  command exits non-zero. ``python -m MODULE ARGS`` runs in this process (``runpy``, the
  module as ``__main__``: no interpreter start and imports per command), anything else in
  ``bash -e``.
- A command (a line starting with one of ``COMMAND_WORDS``) in a fence without a language fails
  the test: fence it as ```bash.

What the test changes in a command, and nothing else (``SUBSTITUTIONS``, applied in order):

- the console scripts become ``python -m`` of this checkout (``mmae-train`` ->
  ``python -m mmae_fast.train`` etc.) and ``python`` this interpreter;
- ``/data/imagenet`` becomes a generated image folder (``train/`` and ``val/``, 2 classes x 4
  JPEGs of 24 x 24 px);
- long runs become short ones: ``--steps N`` (N >= 5) -> ``--steps 2``, ``--epochs N`` ->
  ``--epochs 1``, ``--batch N`` -> ``--batch 8``, ``--accum-iter N`` -> ``--accum-iter 1``;
  ``mmae-eval linprobe|finetune`` get ``--epochs 1 --batch 8 --warmup-epochs 0`` first (the
  protocols' defaults are 90 / 100 epochs); the demo gets ``--steps 2 --probe-epochs 1 --jobs 1``;
  the quick monitor ``--probe-epochs 1``.

Relative paths (``runs/...``) land in the temporary directory. A ``runs/<name>/checkpoint-last.pt``
that a command reads and no earlier command of the block wrote (the GPU pretraining's, say) is a
tiny run's checkpoint (``--model tiny``, 2 steps on digits), copied there first.
"""
import os
import pathlib
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"# doc-test: skip \((.+)\)\s*$")
COMMAND_WORDS = ("mmae-", "python ", "torchrun ", "pip ", "make ", "pytest ", "tensorboard ",
                 "wandb ", "scripts/", "env ")

PY = "python"  # run in this process (below); `python` alone is this interpreter
#: (pattern, replacement, why): applied in this order to every command of a run block
SUBSTITUTIONS = [
    (r"^mmae-train\b", "python -m mmae_fast.train", "this checkout's trainer"),
    (r"^mmae-eval\b", "python -m mmae_fast.eval", "this checkout's evaluation"),
    (r"^mmae-export\b", "python -m mmae_fast.eval.export", "this checkout's export"),
    (r"^mmae-demo\b", "python -m mmae_fast.train.demo", "this checkout's demo"),
    (r"/data/imagenet\b", "{images}", "a generated image folder"),
    (r"--steps (\d{2,}|[5-9])\b", "--steps 2", "a short run"),
    (r"--epochs \d+", "--epochs 1", "one epoch"),
    (r"--batch \d+", "--batch 8", "the tiny image folder has 8 images per split"),
    (r"--accum-iter \d+", "--accum-iter 1", "batch 8 on one process"),
    (r"(-m mmae_fast\.eval (?:linprobe|finetune) )", r"\1--epochs 1 --batch 8 --warmup-epochs 0 ",
     "the protocols' defaults are 90 / 100 epochs of batch 8192 / 2048"),
    (r"(-m mmae_fast\.train\.demo\b)", r"\1 --steps 2 --probe-epochs 1 --jobs 1",
     "the demo's 1500 steps take a minute"),
    (r"(-m mmae_fast\.eval (?!linprobe|finetune)(?:monitor )?)", r"\1--probe-epochs 1 ",
     "the quick monitor's probe, one epoch"),
]
CHECKPOINT = re.compile(r"(runs/[\w.-]+)/checkpoint-last\.pt")


def _blocks():
    """(doc, line, fence language, text) of every fenced block."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^([ \t]*)```(\w*)\n(.*?)^\1```", text, flags=re.S | re.M):
            body = "\n".join(line[len(m.group(1)):] for line in m.group(3).splitlines())
            out.append((path.relative_to(ROOT), text[:m.start()].count("\n") + 1, m.group(2),
                        body))
    return out


def _commands(body: str) -> list[str]:
    """Commands of a block: continuations joined, comment lines and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def substitute(command: str, images: str) -> str:
    for pattern, repl, _why in SUBSTITUTIONS:
        command = re.sub(pattern, repl, command)
    return command.replace("{images}", images)


BASH = [b for b in _blocks() if b[2] == "bash"]
RUN = [b for b in BASH if not SKIP.match(b[3].lstrip().splitlines()[0])]


def test_every_bash_block_is_run_or_marked():
    """A block is run unless marked; a marked block gives a reason; command lines sit only in
    ```bash fences."""
    assert RUN, "no runnable bash block found"
    bad = [f"{doc}:{line}: fenced without a language, holds a command: fence it as ```bash"
           for doc, line, lang, body in _blocks()
           if lang == "" and any(c.startswith(COMMAND_WORDS) for c in _commands(body))]
    bad += [f"{doc}:{line}: '# doc-test: skip' without '(REASON)'"
            for doc, line, lang, body in BASH
            if body.lstrip().startswith("# doc-test: skip") and not SKIP.match(
                body.lstrip().splitlines()[0])]
    assert not bad, bad


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """An ImageNet-layout folder: train/ and val/, classes a and b, 4 JPEGs each."""
    from PIL import Image
    import numpy as np
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                pix = rng.integers(0, 96, (24, 24, 3)) + 128 * c
                Image.fromarray(pix.astype("uint8")).save(root / split / cls / f"{i}.jpg")
    return str(root)


ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}  # wandb never goes online here


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **ENV)


def _run(command: str, cwd: pathlib.Path, capfd) -> tuple[int, str]:
    """(exit code, output tail) of one substituted command, run in ``cwd``."""
    argv = shlex.split(command, comments=True)
    if argv[:2] != ["python", "-m"]:
        proc = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout[-1500:] + proc.stderr[-3000:]
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv, code = [argv[2], *argv[3:]], 0
    os.chdir(cwd)
    try:
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    out, err = capfd.readouterr()
    return code, out[-1500:] + err[-3000:]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """checkpoint-last.pt of a 2-step tiny run on digits: stands in for the GPU runs' ones."""
    from mmae_fast import train
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert train.main(["--model", "tiny", "--data", "digits", "--steps", "2", "--batch", "16",
                       "--no-plot", "--no-progress", "--device", "cpu",
                       "--output-dir", str(out)]) in (0, None)
    return out / "checkpoint-last.pt"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=lambda b: f"{b[0]}:{b[1]}")
def test_bash_block_runs(block, images, tiny_checkpoint, tmp_path, capfd, monkeypatch):
    doc, line, _lang, body = block
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for command in _commands(body):
        command = substitute(command, images)
        for ckpt in CHECKPOINT.findall(command):
            target = tmp_path / ckpt / "checkpoint-last.pt"
            if not target.exists() and "-m mmae_fast.train " not in command + " ":
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tiny_checkpoint, target)
        code, tail = _run(command, tmp_path, capfd)
        assert code == 0, f"{doc}:{line}: `{command}` exited {code}:\n{tail}"
