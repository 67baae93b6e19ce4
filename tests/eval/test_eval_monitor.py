"""Quick monitors at scale: streamed effective rank and kNN equal the all-in-memory values, no
silent image cap, the GPU by default, any checkpoint through the CLI."""
import pytest
import torch
import torch.nn.functional as F

from eval_helpers import image_folder, mae_checkpoint
import mmae_fast
from mmae_fast.eval import common, monitor
from mmae_fast.eval.encoder import build_vit, load_encoder


def test_streamed_effective_rank_equals_the_stacked_one(gen):
    f = torch.randn(300, 24, generator=gen) @ torch.randn(24, 24, generator=gen).tril()
    acc = monitor.GramRank()
    for chunk in f.split(64):
        acc.add(chunk)
    expected = float(mmae_fast.effective_rank(f.double()))
    assert acc.value() == pytest.approx(expected, rel=1e-10)
    assert 1 < expected < 24


def test_knn_predictions_match_a_brute_force_vote(gen):
    bank, labels = torch.randn(50, 8, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    q = torch.randn(7, 8, generator=gen)
    pred = monitor.knn_predict(F.normalize(bank, dim=1), labels, q, classes=4, k=5,
                               temperature=0.5)
    for i in range(7):
        sims = [float(F.cosine_similarity(q[i], b, dim=0)) for b in bank]
        top = sorted(range(50), key=lambda j: -sims[j])[:5]
        votes = [sum(torch.exp(torch.tensor(sims[j] / 0.5)) for j in top if labels[j] == c)
                 for c in range(4)]
        assert int(pred[i]) == max(range(4), key=lambda c: float(votes[c]))


def test_every_image_is_used_unless_capped(tmp_path):
    mae_checkpoint(tmp_path / "ck.pt")
    root = image_folder(tmp_path / "imgs", train=5, val=3)
    state, info = load_encoder(str(tmp_path / "ck.pt"))
    vit = build_vit(state, info["kwargs"], num_classes=0)
    full = monitor.evaluate_model(vit, data="imagefolder", data_path=str(root), device="cpu",
                                  probe_epochs=2, batch=4)
    assert (full["n_train"], full["n_test"], full["width"]) == (15, 9, 64)
    capped = monitor.evaluate_model(vit, data="imagefolder", data_path=str(root), device="cpu",
                                    probe_epochs=2, max_images=4, knn=False)
    assert (capped["n_train"], capped["n_test"], capped["knn_acc"]) == (4, 4, None)


def test_device_defaults_to_the_gpu_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert common.resolve_device(None).type == expected
    assert common.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            common.resolve_device("cuda")


def test_cli_on_a_checkpoint_and_an_export(tmp_path, capsys):
    from mmae_fast.eval import cli, export
    (tmp_path / "run").mkdir()
    mae_checkpoint(tmp_path / "run" / "ck.pt")
    exp = export.export(str(tmp_path / "run" / "ck.pt"), str(tmp_path / "exp" / "e.safetensors"))
    argv = ["--probe-epochs", "2", "--max-images", "60", "--device", "cpu"]
    assert cli.main([str(tmp_path / "run" / "ck.pt"), *argv]) == 0  # the original form
    assert cli.main(["monitor", exp["path"], *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines
            if line.startswith(("run ", "exp ")) and "acc" not in line]  # not the headers
    assert [r[0] for r in rows] == ["run", "exp"]
    assert rows[0][1:] == rows[1][1:]  # the export evaluates exactly as its checkpoint
