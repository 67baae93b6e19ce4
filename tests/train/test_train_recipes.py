"""--recipe: every official setting in one flag, explicit flags override it loudly."""
import json

import pytest

from mmae_fast import train
from mmae_fast.train import recipes

#: the official M-MAE ViT-L pretraining (yifanzhang-pro/M-MAE pretrain.sh, latest version;
#: main_pretrain.py; models_mae.py), written out independently of recipes.py
OFFICIAL_MMAE_VITL = dict(
    model="vit_large_patch16", img_size=224, batch=128, accum_iter=1, epochs=200,
    warmup_epochs=40, blr=1.5e-4, min_lr=0.0, weight_decay=0.05, mask_ratio=0.75,
    norm_pix_loss=True, reg="tcr", lamb=1e-2, mu=3.0, centering=False, precision="fp16",
    grad_semantics="per_rank", cls_norm="shared", online_head="linear")


def _parse(argv, tmp_path):
    lines = []
    args = train.parse_args(argv + ["--data-path", str(tmp_path)], log=lines.append)
    return args, lines


@pytest.mark.parametrize("name, reg, lamb", [("mmae-vitl", "tcr", 1e-2),
                                             ("mae-vitl", "none", 0.0),
                                             ("umae-vitl", "uniformity", 1e-2)])
def test_recipes_equal_the_official_settings(tmp_path, name, reg, lamb):
    args, lines = _parse(["--recipe", name], tmp_path)
    expected = OFFICIAL_MMAE_VITL | {"reg": reg, "lamb": lamb}
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.warmup_steps is None and args.lr is None and args.data == "imagefolder"
    assert recipes.RECIPE_WORLD * args.batch == recipes.RECIPE_GLOBAL_BATCH == 1024
    assert len(lines) == 1 and lines[0].startswith(f"mmae-train: --recipe {name}: ")
    assert "mu=3.0" in lines[0] and "grad_semantics='per_rank'" in lines[0]


def test_explicit_flags_override_loudly(tmp_path):
    args, lines = _parse(["--recipe", "mmae-vitl", "--batch", "64", "--lamb", "1e-2",
                          "--warmup-steps", "5", "--no-norm-pix-loss"], tmp_path)
    assert args.batch == 64 and args.warmup_steps == 5 and args.warmup_epochs is None
    assert args.norm_pix_loss is False and args.mu == 3.0
    loud = [line for line in lines if "OVERRIDES" in line]
    assert len(loud) == 3  # batch, warmup, norm_pix_loss; --lamb 1e-2 equals the recipe
    assert any("--batch 64" in line and "128" in line for line in loud)
    assert sorted(args.recipe_overrides) == ["batch", "norm_pix_loss", "warmup_steps"]


def test_recipe_is_stored_in_args_json(tmp_path, capsys):
    """A short run with the recipe's regulariser settings on the tiny model (the ViT-L itself
    is too big for a CPU test): args.json holds the recipe and what overrode it."""
    out = tmp_path / "run"
    train.main(["--recipe", "mmae-vitl", "--model", "tiny", "--img-size", "16", "--data",
                "digits", "--batch", "8", "--steps", "1", "--warmup-steps", "0", "--precision",
                "fp32", "--device",
                "cpu", "--no-progress", "--no-plot", "--no-export", "--output-dir", str(out)])
    stdout = capsys.readouterr().out
    assert "--recipe mmae-vitl:" in stdout and "WARNING" in stdout  # 8 images != 1024
    # per_rank on 1 rank: R's gradient weighted lamb/1, 8x the official run's lamb/8
    assert "per_rank on 1 rank(s)" in stdout and "8x less" in stdout
    assert "--grad-semantics exact --lamb 0.00125" in stdout
    stored = json.load(open(out / "args.json"))
    assert stored["recipe"] == "mmae-vitl" and stored["cls_norm"] == "shared"
    assert stored["mu"] == 3.0 and stored["grad_semantics"] == "per_rank"
    assert sorted(stored["recipe_overrides"]) == ["batch", "data", "img_size", "model",
                                                  "precision", "warmup_steps"]


def test_warmup_longer_than_the_run_is_loud(tmp_path, capsys):
    """A recipe's 40 warmup epochs with a short --steps keep the lr in warmup for the whole
    run: a warning naming --warmup-steps (not fatal: smoke runs do it on purpose)."""
    rc = train.main(["--recipe", "mmae-vitl", "--model", "tiny", "--img-size", "16", "--data",
                     "digits", "--batch", "8", "--steps", "2", "--precision", "fp32",
                     "--device", "cpu", "--no-progress", "--no-plot", "--no-export",
                     "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 0 and "WARNING the warmup" in err and "--warmup-steps" in err


def test_exact_gradient_semantics_on_fewer_gpus_is_not_warned_about(tmp_path, capsys):
    """--grad-semantics exact --lamb 1.25e-3: the official weight on any number of ranks."""
    rc = train.main(["--recipe", "mmae-vitl", "--model", "tiny", "--img-size", "16", "--data",
                     "digits", "--batch", "8", "--steps", "1", "--warmup-steps", "0",
                     "--precision", "fp32", "--device", "cpu", "--no-progress", "--no-plot",
                     "--no-export", "--grad-semantics", "exact", "--lamb", "1.25e-3",
                     "--output-dir", str(tmp_path / "run")])
    assert rc == 0 and "WARNING --grad-semantics per_rank" not in capsys.readouterr().out
