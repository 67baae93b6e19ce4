"""mmae-eval finetune: official defaults, timm layer decay (lr ratios 0.65^k), end to end on
digits (mixup, RandAugment, EMA) and an image folder, exact resume."""
import pytest
import torch

from eval_helpers import image_folder, mae_checkpoint
from mmae_fast.eval import common, finetune
from mmae_fast.eval.encoder import build_vit, load_encoder


def _args(ckpt, out, *extra):
    return finetune.build_parser().parse_args(
        [str(ckpt), "--output-dir", str(out), "--device", "cpu", "--workers", "0", *extra])


def test_defaults_are_the_official_settings(tmp_path):
    a = _args("x.pt", tmp_path)
    assert (a.epochs, a.warmup_epochs, a.batch, a.blr, a.weight_decay, a.min_lr) == \
        (100, 5, 2048, 5e-4, 0.05, 1e-6)
    assert (a.layer_decay, a.drop_path, a.mixup, a.cutmix, a.smoothing, a.reprob, a.aa,
            a.global_pool, a.model_ema) == (0.65, 0.1, 0.8, 1.0, 0.1, 0.25,
                                            "rand-m9-mstd0.5-inc1", "token", False)
    common.check_common(a, common.Env("cpu"))
    assert a.lr == pytest.approx(5e-4 * 2048 / 256)


def test_layer_decay_groups_have_lr_ratios_0_65_to_the_k(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    state, info = load_encoder(str(tmp_path / "ck.pt"))
    depth = info["kwargs"]["depth"]
    model = build_vit(state, info["kwargs"], num_classes=10)
    opt = finetune.optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.65)
    common.set_lr(opt, 3.0)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            seen.add(n)
            # MAE's layer ids: stem 0, block i -> i + 1, final norm and head depth + 1
            layer = (0 if n.startswith(("cls_token", "pos_embed", "patch_embed")) else
                     int(n.split(".")[1]) + 1 if n.startswith("blocks.") else depth + 1)
            assert g["lr"] == 3.0 * 0.65 ** (depth + 1 - layer), n  # exact: the same products
            no_decay = p.ndim <= 1 or n in ("cls_token", "pos_embed")
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}
    lrs = sorted({g["lr"] for g in opt.param_groups}, reverse=True)
    assert len(lrs) == depth + 2
    for a, b in zip(lrs, lrs[1:]):
        assert b / a == pytest.approx(0.65, rel=1e-12)


@pytest.mark.slow  # essential: resume / DDP / trainer integration
def test_digits_end_to_end_with_ema_and_resume_is_exact(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    common_args = ("--epochs", "2", "--warmup-epochs", "1", "--batch", "8", "--max-images",
                   "24", "--model-ema", "--model-ema-decay", "0.5")
    full = finetune.run(_args(tmp_path / "ck.pt", tmp_path / "full", *common_args))
    finetune.run(_args(tmp_path / "ck.pt", tmp_path / "part", *common_args, "--stop-after", "1"))
    rest = finetune.run(_args(tmp_path / "ck.pt", tmp_path / "part", *common_args,
                              "--resume", "auto"))
    assert rest["start_epoch"] == 1 and rest["history"] == full["history"]
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(rest["checkpoint"], weights_only=True)
    for key in ("model", "ema"):
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), (key, k)
    # the encoder was trained (every block moved) and the EMA differs from the weights
    start, _ = load_encoder(str(tmp_path / "ck.pt"))
    assert not torch.equal(a["model"]["blocks.0.attn.qkv.weight"],
                           start["blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["model"]["head.weight"], a["ema"]["head.weight"])
    last = full["history"][-1]
    assert last["n"] == 24 and {"top1_ema", "top5_ema"} <= set(last)
    # the reported top-1 is the saved model's accuracy, recomputed here
    from mmae_fast.eval import data as edata
    model = build_vit(a["model"], a["vit_kwargs"]).eval()
    ds = edata.evenly(edata.dataset("digits", "val", edata.eval_transform(16)), 24)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        top1 = 100.0 * float((model(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(last["top1"], abs=100 / 24 + 1e-9)


def test_image_folder_with_average_pooling(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    root = image_folder(tmp_path / "imgs")
    res = finetune.run(_args(tmp_path / "ck.pt", tmp_path / "ft", "--data", "imagefolder",
                             "--data-path", str(root), "--epochs", "1", "--batch", "6",
                             "--global-pool", "avg"))
    assert res["history"][0]["n"] == 6
    assert "fc_norm.weight" in res["model"].state_dict()
    # the fine-tuned model (avg pooling, fc_norm, head) exports and reloads with equal logits
    from mmae_fast.eval import export
    out = export.export(res["checkpoint"], str(tmp_path / "ft.safetensors"))
    assert out["timm_kwargs"]["global_pool"] == "avg" and out["timm_kwargs"]["num_classes"] == 3
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer
    again = VisionTransformer(**out["timm_kwargs"]).eval()
    again.load_state_dict(load_file(out["path"]))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), res["model"].eval()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, match", [
    (("--batch", "7"), "even batch"),
    (("--global-pool", "max"), "--global-pool"),
    (("--layer-decay", "1.5"), "--layer-decay"),
])
def test_bad_arguments_name_the_argument(tmp_path, extra, match):
    mae_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ValueError, match=match):
        finetune.run(_args(tmp_path / "ck.pt", tmp_path / "o", *extra))


def test_a_missing_val_folder_is_a_clear_error(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no val/ folder"):
        finetune.run(_args(tmp_path / "ck.pt", tmp_path / "o", "--data", "imagefolder",
                           "--data-path", str(tmp_path / "imgs")))
