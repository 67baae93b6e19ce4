"""Frozen-feature evaluation of a pretrained encoder: linear probe, kNN, effective rank.

    python -m mmae_fast.evaluate runs/demo/tcr/checkpoint-last.pt [more checkpoints ...]

Features: the CLS token of the whole (unmasked) image after the encoder norm (the feature the
regulariser shapes). Linear probe as MAE: ``BatchNorm1d(affine=False)`` + ``Linear`` trained on
the frozen features (AdamW, cosine schedule), accuracy on the test split. kNN: cosine
similarity, k neighbours, votes weighted ``exp(sim / T)`` (k = 20, T = 0.07). Effective rank:
``mmae_fast.effective_rank`` of the test features.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, data as data_mod


@torch.no_grad()
def extract_features(model, images: torch.Tensor, batch: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """CLS features (n, width) of ``images`` (n, 3, H, W), float32 on the CPU."""
    was_training = model.training
    model.eval()
    out = [model.features(images[i:i + batch].to(device)).float().cpu()
           for i in range(0, len(images), batch)]
    model.train(was_training)
    return torch.cat(out)


def linear_probe(train_f, train_y, test_f, test_y, *, epochs: int = 100, batch: int = 256,
                 lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> float:
    """Test accuracy of ``Linear(BatchNorm1d(affine=False)(f))`` trained on frozen features."""
    g = torch.Generator().manual_seed(seed)
    classes = int(max(train_y.max(), test_y.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.BatchNorm1d(train_f.shape[1], affine=False, eps=1e-6),
                             nn.Linear(train_f.shape[1], classes))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(train_f)
    per_epoch = max(1, n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(head(train_f[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        return float((head(test_f).argmax(1) == test_y).float().mean())


@torch.no_grad()
def knn_accuracy(train_f, train_y, test_f, test_y, *, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Weighted kNN accuracy on cosine similarity (votes ``exp(sim/T)`` of the k nearest)."""
    train_n = F.normalize(train_f, dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_f))
    correct = 0
    for i in range(0, len(test_f), chunk):
        sim = F.normalize(test_f[i:i + chunk], dim=1) @ train_n.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(sim), classes).scatter_add_(1, train_y[idx], weights)
        correct += int((votes.argmax(1) == test_y[i:i + chunk]).sum())
    return correct / len(test_f)


def evaluate_model(model, *, data: str = "digits", img_size: int | None = None,
                   data_path: str | None = None, device="cpu", probe_epochs: int = 100,
                   knn: bool = True, seed: int = 0) -> dict:
    """{linear_acc, knn_acc, eff_rank, n_train, n_test} of ``model``'s frozen CLS features."""
    from . import effective_rank
    img_size = img_size or model.img_size
    xtr, ytr, xte, yte = data_mod.eval_arrays(data, img_size, data_path)
    ftr = extract_features(model, xtr, device=device)
    fte = extract_features(model, xte, device=device)
    out = {"linear_acc": linear_probe(ftr, ytr, fte, yte, epochs=probe_epochs, seed=seed),
           "knn_acc": knn_accuracy(ftr, ytr, fte, yte) if knn else None,
           "eff_rank": float(effective_rank(fte)), "n_train": len(ftr), "n_test": len(fte),
           "width": ftr.shape[1]}
    return out


def load_model(path: str):
    """(model, training args dict) from a training checkpoint (weights_only load)."""
    from .model import create_model
    state = checkpoint.load(path)
    a = state["args"]
    head = any(k.startswith("head.") for k in state["model"])
    num_classes = state["model"]["head.1.weight"].shape[0] if head else 0
    model = create_model(a["model"], img_size=a["img_size"], mask_ratio=a["mask_ratio"],
                         norm_pix_loss=a["norm_pix_loss"], num_classes=num_classes,
                         cls_norm=a["cls_norm"])
    model.load_state_dict(state["model"])
    return model, a


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TABLE = [("name", "run", "s"), ("linear_acc", "linear acc", ".3f"), ("knn_acc", "kNN acc", ".3f"),
         ("eff_rank", "eff. rank", ".1f"), ("width", "of d", "d")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mmae-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="training checkpoints (checkpoint-last.pt)")
    p.add_argument("--data", help="digits or imagefolder (default: the run's --data)")
    p.add_argument("--data-path", help="imagefolder root with train/ and val/")
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--no-knn", dest="knn", action="store_false")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.probe_epochs < 1:
        p.error(f"--probe-epochs must be >= 1, got {args.probe_epochs}")
    rows = []
    for path in args.checkpoints:
        try:
            model, a = load_model(path)
            data = args.data or a["data"]
            if data == "synthetic":
                raise ValueError(f"{path}: trained on synthetic data; pass --data digits or "
                                 f"--data imagefolder --data-path DIR to evaluate")
            res = evaluate_model(model.to(args.device), data=data, img_size=a["img_size"],
                                 data_path=args.data_path or a.get("data_path"),
                                 device=args.device, probe_epochs=args.probe_epochs,
                                 knn=args.knn)
        except ValueError as exc:
            p.error(str(exc))
        rows.append(res | {"name": os.path.basename(os.path.dirname(os.path.abspath(path)))})
    print(format_table(rows, TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
