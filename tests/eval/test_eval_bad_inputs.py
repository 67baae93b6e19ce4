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


@pytest.mark.parametrize("kind", ["linprobe", "finetune", "monitor"])
def test_a_data_path_is_never_ignored(tmp_path, capsys, kind):
    """--data-path alone means that folder (an empty one: its missing train/ is named, not digits
    evaluated); beside --data digits it is a usage error."""
    from eval_helpers import mae_checkpoint
    from mmae_fast.eval import cli
    ck = tmp_path / "ck.pt"
    mae_checkpoint(ck)
    folder = tmp_path / "images"
    folder.mkdir()
    out = [] if kind == "monitor" else ["--output-dir", str(tmp_path / "o")]
    for extra, match in ((["--data", "digits"], "is read only by --data imagefolder"),
                         ([], "has no train/ folder")):
        with pytest.raises(SystemExit) as exc:
            cli.main([kind, str(ck), "--data-path", str(folder), *extra, *out])
        assert exc.value.code == 2
        assert match in capsys.readouterr().err
