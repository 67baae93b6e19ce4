"""The docs stay true: every Python block of README.md, docs/*.md, bench/README.md and
tests/README.md compiles; the runnable ones run (the CPU export example of docs/evaluation.md,
end to end with its bash commands, and its printed value is the one the text states); the
README's own examples are checked value by value in tests/tooling/test_readme.py."""
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "tests" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path, lang):
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(path):
    for i, code in enumerate(_blocks(path, "python")):
        compile(code, f"{path.name}[{i}]", "exec")


def test_docs_name_existing_files_and_modules():
    """Paths like `mmae_fast/ops/tcr/op.py`, `bench/stages.py` or `docs/staged.md` that the docs
    name in backticks exist."""
    missing = []
    for path in DOCS:
        for name in re.findall(r"`((?:mmae_fast|bench|docs|scripts|csrc|tests)/[\w/.-]+)`",
                               path.read_text()):
            target = name.split("::")[0].rstrip("/")
            if not (ROOT / target).exists() and not any(ROOT.glob(target)):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


@pytest.mark.slow
def test_evaluation_export_example_runs_and_prints_what_the_text_says(tmp_path):
    """docs/evaluation.md: the bash block (tiny train + export) then the Python block, with its
    folder moved under tmp_path; the printed value equals the one the text states."""
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    code = _blocks(ROOT / "docs" / "evaluation.md", "python")[0]
    bash = next(b for b in _blocks(ROOT / "docs" / "evaluation.md", "bash")
                if "mmae_fast.eval.export" in b)
    stated = re.search(r"```\n\nprints `([^`]+)`", doc[doc.index(code):]).group(1)
    out = str(tmp_path / "demo")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for command in bash.replace("\\\n", " ").strip().splitlines():
        command = command.replace("/tmp/mmae-export-demo", out).replace("python ", sys.executable
                                                                        + " ", 1)
        subprocess.run(command, shell=True, check=True, cwd=ROOT, env=env, timeout=300,
                       capture_output=True)
    proc = subprocess.run([sys.executable, "-c", code.replace("/tmp/mmae-export-demo", out)],
                          check=True, cwd=ROOT, env=env, timeout=300, capture_output=True,
                          text=True)
    assert proc.stdout.strip() == stated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_doc_example_runs():
    import mmae_fast

    if "cuda" not in mmae_fast.available_backends():
        pytest.fail("the CUDA extension is not built")
    code = _blocks(ROOT / "docs" / "cuda.md", "python")[0]
    scope = {"cls_features": torch.randn(256, 768, device="cuda", requires_grad=True)}
    exec(code, scope)
    assert torch.isfinite(scope["loss"])


def test_losses_examples_run_and_compute_the_independent_values():
    """docs/losses.md: the plain loop, the LightningModule-like class, the solo-learn-style
    function and the porting snippet run; the values they leave equal the independent formulas
    (tests/independent.py) on the features they saw."""
    import independent as ind

    loop, lightning_like, solo_like, porting = _blocks(ROOT / "docs" / "losses.md", "python")
    scope = {}
    exec(loop, scope)
    assert scope["reg"].item() == pytest.approx(ind.tcr_exact(scope["feats"], 1.0), rel=1e-5)

    scope = {}
    exec(lightning_like, scope)
    feats = scope["module"].encoder(scope["batch"]).detach()
    want = feats.square().mean().item() + 0.01 * ind.tcr_exact(feats, 3.0)
    assert scope["loss"].item() == pytest.approx(want, rel=1e-5)
    assert scope["module"].logged["uniformity"] == pytest.approx(ind.uniformity(feats), rel=1e-5)
    assert scope["module"].encoder.weight.grad is not None

    scope = {}
    exec(solo_like, scope)
    z1, z2 = scope["z1"].detach(), scope["z2"]
    want = ((z1 - z2).square().sum(1).mean().item()
            + 0.01 * (ind.tcr_exact(z1, 1.0) + ind.tcr_exact(z2, 1.0)) / 2)
    assert scope["loss"].item() == pytest.approx(want, rel=1e-5)
    assert scope["z1"].grad is not None

    scope = {}
    exec(porting, scope)
    x = torch.randn(40, 12, dtype=torch.float64)
    assert "grad_semantics='per_rank'" in repr(scope["criterion"])
    assert scope["criterion"](x).item() == pytest.approx(ind.tcr_exact(x, 3.0), rel=1e-12)


def test_every_test_file_is_in_the_tests_readme():
    """tests/README.md's tables name every tests/<folder>/test_*.py."""
    table = (ROOT / "tests" / "README.md").read_text()
    names = [str(p.relative_to(ROOT / "tests"))
             for p in sorted((ROOT / "tests").glob("*/test_*.py"))]
    missing = [name for name in names if f"`{name}`" not in table]
    assert not missing, f"tests/README.md does not list {missing}"

