"""The number of attention heads of an evaluated encoder (``eval/encoder.py``): what the input
records wins (an export's sidecar, else the training run's preset); ``--num-heads`` only where
nothing is recorded; a contradicting ``--num-heads`` is a one-line error (the weights' shapes
do not depend on the head count, so it would otherwise build a different model silently)."""
import os

import pytest
import torch

from eval_helpers import mae_checkpoint
from mmae_fast.eval import export
from mmae_fast.eval.encoder import build_vit, cls_features, load_encoder

TINY_HEADS = 4  # mmae_fast/mae/model.py: the tiny preset, width 64, 4 heads


def _features(path, gen, **kw):
    state, info = load_encoder(str(path), **kw)
    model = build_vit(state, info["kwargs"], num_classes=0).eval()
    return info["kwargs"]["num_heads"], cls_features(model, torch.randn(
        3, 3, 16, 16, generator=gen))


def test_the_preset_gives_the_heads_and_a_matching_flag_is_accepted(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    assert _features(tmp_path / "ck.pt", torch.Generator().manual_seed(0))[0] == TINY_HEADS
    assert _features(tmp_path / "ck.pt", torch.Generator().manual_seed(0),
                     num_heads=TINY_HEADS)[0] == TINY_HEADS


@pytest.mark.parametrize("source", ["preset", "sidecar"])
def test_a_contradicting_num_heads_is_an_error(tmp_path, source):
    mae_checkpoint(tmp_path / "ck.pt")
    path = tmp_path / "ck.pt"
    if source == "sidecar":  # an export: no training args, the heads in its JSON sidecar
        path = export.export(str(path), str(tmp_path / "enc.safetensors"))["path"]
    with pytest.raises(ValueError, match=r"--num-heads 2 contradicts .* 4 heads; drop --num-heads"):
        load_encoder(str(path), num_heads=2)


def test_the_cli_refuses_a_contradicting_num_heads_in_one_line(tmp_path, capsys):
    mae_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(SystemExit) as exc:
        export.main([str(tmp_path / "ck.pt"), "-o", str(tmp_path / "x.safetensors"),
                     "--num-heads", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--num-heads 2 contradicts" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_num_heads_serves_an_export_without_a_sidecar(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    res = export.export(str(tmp_path / "ck.pt"), str(tmp_path / "enc.safetensors"))
    g = torch.Generator().manual_seed(0)
    _, want = _features(res["path"], g)
    os.remove(os.path.splitext(res["path"])[0] + ".json")
    with pytest.raises(ValueError, match="pass --num-heads N"):
        load_encoder(res["path"])
    heads, got = _features(res["path"], torch.Generator().manual_seed(0), num_heads=TINY_HEADS)
    assert heads == TINY_HEADS
    torch.testing.assert_close(got, want, rtol=0, atol=0)
