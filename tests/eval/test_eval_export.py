"""mmae-export: exported weights load into a fresh timm model and give the trained model's
outputs (features and folded online head); any checkpoint; clear errors."""
import json

import pytest
import torch

from eval_helpers import mae_checkpoint
from mmae_fast.mae.timm_compat import timm  # the torchvision shim before timm (CPU torch)
from mmae_fast.eval import export


def _reference(mae, x):
    """The trained MAE's CLS after its encoder norm and its online head (eval mode)."""
    with torch.no_grad():
        cls = mae.forward_encoder(x, mask=False)[0][:, 0]
        return cls, (mae.head(cls) if mae.head is not None else None)


@pytest.mark.parametrize("bn_head", [True, False])
def test_safetensors_round_trip_through_timm_create_model(tmp_path, gen, bn_head, capsys):
    mae = mae_checkpoint(tmp_path / "ck.pt", bn_head=bn_head)
    out = tmp_path / "exp" / "tiny.safetensors"
    assert export.main([str(tmp_path / "ck.pt"), "-o", str(out)]) == 0
    assert "timm.create_model" in capsys.readouterr().out
    cfg = json.load(open(tmp_path / "exp" / "tiny.json"))
    assert cfg["timm_kwargs"]["num_classes"] == 10 and cfg["source_kind"] == "train"
    model = timm.create_model(cfg["timm_name"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10),
                              **cfg["timm_kwargs"]).eval()
    x = torch.randn(5, 3, 16, 16, generator=gen)
    cls, logits = _reference(mae, x)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(feats, cls, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)


def test_pt_export_without_head_loads_strictly(tmp_path, gen):
    mae = mae_checkpoint(tmp_path / "ck.pt")
    res = export.export(str(tmp_path / "ck.pt"), str(tmp_path / "enc.pt"), head=False)
    state = torch.load(res["path"], weights_only=True)
    assert not any(k.startswith("head") for k in state)
    from timm.models.vision_transformer import VisionTransformer
    model = VisionTransformer(**res["timm_kwargs"]).eval()
    model.load_state_dict(state)  # strict: every key of a num_classes=0 ViT, nothing more
    x = torch.randn(3, 3, 16, 16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference(mae, x)[0], rtol=0, atol=1e-6)


def test_an_export_and_a_finetune_checkpoint_export_again(tmp_path, gen):
    from mmae_fast.eval import finetune
    mae_checkpoint(tmp_path / "ck.pt")
    first = export.export(str(tmp_path / "ck.pt"), str(tmp_path / "a.safetensors"))
    again = export.export(first["path"], str(tmp_path / "b.safetensors"))  # via the sidecar
    from safetensors.torch import load_file
    a, b = load_file(first["path"]), load_file(again["path"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = finetune.run(finetune.build_parser().parse_args(
        [str(tmp_path / "ck.pt"), "--output-dir", str(tmp_path / "ft"), "--device", "cpu",
         "--workers", "0", "--epochs", "1", "--batch", "8", "--max-images", "16"]))
    ft = export.export(res["checkpoint"], str(tmp_path / "ft.safetensors"))
    model = timm.create_model(ft["timm_name"], pretrained=True, pretrained_cfg_overlay=dict(
        file=ft["path"], num_classes=10), **ft["timm_kwargs"]).eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), res["model"].eval()(x), rtol=0, atol=1e-6)


def test_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main([str(tmp_path / "missing.pt")])
    assert "no file at" in capsys.readouterr().err
    mae_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="end it in .safetensors"):
        export.export(str(tmp_path / "ck.pt"), str(tmp_path / "enc.bin"))
    torch.save({"model": {"w": torch.zeros(2)}, "args": {"model": "tiny"}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no encoder key"):
        export.export(str(tmp_path / "x.pt"))


@pytest.mark.slow  # essential: resume / DDP / trainer integration
def test_a_mid_run_trainer_checkpoint_exports(tmp_path, gen):
    """A real ``mmae-train`` run stopped half-way (``--stop-after``, nothing exported)."""
    from mmae_fast import train
    from mmae_fast.eval import monitor
    run = tmp_path / "run"
    train.main(["--model", "tiny", "--data", "digits", "--steps", "4", "--stop-after", "2",
                "--no-export", "--no-plot", "--no-progress", "--device", "cpu",
                "--output-dir", str(run)])
    assert not (run / "encoder.safetensors").exists()
    res = export.export(str(run / "checkpoint-last.pt"), head=False)
    assert res["path"] == str(run / "encoder-export.safetensors")
    mae, _ = monitor.load_model(str(run / "checkpoint-last.pt"))
    model = timm.create_model(res["timm_name"], pretrained=True, pretrained_cfg_overlay=dict(
        file=res["path"]), **res["timm_kwargs"]).eval()
    x = torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference(mae.eval(), x)[0], rtol=0, atol=1e-6)
