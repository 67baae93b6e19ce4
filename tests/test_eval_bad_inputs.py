"""mmae-export / mmae-eval on files that are not checkpoints: one usage line (exit 2), never a
traceback."""
import subprocess
import sys

import pytest
import torch


@pytest.mark.parametrize("content", ["text", "tensor", "truncated"])
def test_export_names_an_unreadable_checkpoint(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content == "text":
        path.write_text("hello")
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    else:
        torch.save({"model": {"w": torch.ones(100)}}, path)
        path.write_bytes(path.read_bytes()[:50])
    proc = subprocess.run([sys.executable, "-m", "mmae_fast.eval.export", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(path) in proc.stderr
