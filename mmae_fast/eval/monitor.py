"""Quick monitors of a frozen encoder (not the paper's protocols): AdamW linear probe on
centre-crop features, weighted kNN, effective rank.

Features: the CLS token after the encoder's final norm of whole (unmasked) images. Linear
probe: ``Linear(BatchNorm1d(affine=False)(f))`` trained on the frozen train features (AdamW,
cosine), accuracy on the held-out split. kNN: cosine similarity, the k nearest vote with
``exp(sim / T)`` (k = 20, T = 0.07). Effective rank ``exp(H_1)`` of the held-out features.

Scale: every image is used unless ``max_images`` is given. The train features are held (they
are the probe's training set and the kNN bank: n x d float32, 3.9 GB for ImageNet at d = 768);
the held-out features are streamed batch by batch: kNN votes, probe predictions and the d x d
Gram of the normalised rows (from which the effective rank follows exactly) are accumulated.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def extract_features(model, images: torch.Tensor, batch: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """CLS features (n, width) of ``images`` (n, 3, H, W) by ``model.features``, float32, CPU."""
    was_training = model.training
    model.eval()
    out = [_features(model, images[i:i + batch].to(device)).float().cpu()
           for i in range(0, len(images), batch)]
    model.train(was_training)
    return torch.cat(out)


def _features(model, x):
    if hasattr(model, "features"):  # the trainer's MaskedAutoencoder
        return model.features(x)
    from .encoder import cls_features
    return cls_features(model, x)


def linear_probe(train_f, train_y, test_f, test_y, *, epochs: int = 100, batch: int = 256,
                 lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> float:
    """Test accuracy of ``Linear(BatchNorm1d(affine=False)(f))`` trained on frozen features."""
    head = train_probe(train_f, train_y, epochs=epochs, batch=batch, lr=lr,
                       weight_decay=weight_decay, seed=seed,
                       classes=int(max(train_y.max(), test_y.max())) + 1)
    with torch.no_grad():
        return float((head(test_f.to(head[1].weight.device)).argmax(1).cpu() == test_y)
                     .float().mean())


def train_probe(train_f, train_y, *, classes: int, epochs: int = 100, batch: int = 256,
                lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> nn.Module:
    """The probe head (eval mode) trained with AdamW + cosine on ``train_f`` (n, d)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.BatchNorm1d(train_f.shape[1], affine=False, eps=1e-6),
                             nn.Linear(train_f.shape[1], classes)).to(train_f.device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(train_f)
    per_epoch = max(1, n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    train_y = train_y.to(train_f.device)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(train_f.device)
        for i in range(per_epoch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(head(train_f[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def knn_predict(bank_n, bank_y, query, *, classes: int, k: int = 20,
                temperature: float = 0.07) -> torch.Tensor:
    """Class predictions (q,) of ``query`` (q, d) against the L2-normalised ``bank_n`` (n, d)."""
    sim = F.normalize(query.to(bank_n.dtype), dim=1) @ bank_n.T
    top, idx = sim.topk(min(k, len(bank_n)), dim=1)
    votes = torch.zeros(len(sim), classes, dtype=top.dtype, device=top.device)
    votes.scatter_add_(1, bank_y[idx], (top / temperature).exp())
    return votes.argmax(1)


@torch.no_grad()
def knn_accuracy(train_f, train_y, test_f, test_y, *, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Weighted kNN accuracy on cosine similarity (votes ``exp(sim/T)`` of the k nearest)."""
    bank = F.normalize(train_f, dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for i in range(0, len(test_f), chunk):
        pred = knn_predict(bank, train_y, test_f[i:i + chunk], classes=classes, k=k,
                           temperature=temperature)
        correct += int((pred.cpu() == test_y[i:i + chunk]).sum())
    return correct / len(test_f)


class GramRank:
    """Streamed effective rank: ``G = Σ_batches ZᵀZ`` (float64, d x d) of the L2-normalised rows;
    ``exp(H_1(G / tr G))`` equals ``mmae_fast.effective_rank`` of all rows stacked (ZZᵀ and
    ZᵀZ share their non-zero spectrum)."""

    def __init__(self):
        self.gram = None

    def add(self, f: torch.Tensor) -> None:
        z = F.normalize(f.double(), dim=1)
        g = z.T @ z
        self.gram = g if self.gram is None else self.gram + g

    def value(self) -> float:
        from ..reference import renyi_entropy_psd
        if not bool(torch.isfinite(self.gram).all()):
            raise ValueError("the encoder's CLS features of the held-out images are not finite "
                             "(non-finite or overflowing weights); evaluate a checkpoint from "
                             "before the divergence")
        return float(renyi_entropy_psd(self.gram, 1.0).exp())


def _batches(x, y, batch):
    for i in range(0, len(x), batch):
        yield x[i:i + batch], y[i:i + batch]


@torch.no_grad()
def _collect(model, batches, device):
    fs, ys = [], []
    for x, y in batches:
        fs.append(_features(model, x.to(device)).float())
        ys.append(y.to(device))
    return torch.cat(fs), torch.cat(ys)


def evaluate_model(model, *, data: str = "digits", img_size: int | None = None,
                   data_path: str | None = None, device=None, probe_epochs: int = 100,
                   knn: bool = True, seed: int = 0, max_images: int | None = None,
                   batch: int = 256, workers: int = 0) -> dict:
    """{linear_acc, knn_acc, eff_rank, n_train, n_test, width} of ``model``'s frozen CLS
    features (``model``: the trainer's MAE, or a timm ViT). ``data``: digits (the trainer's
    tensors) or imagefolder (``data_path``/train and /val, resize + centre crop, streamed)."""
    from . import common, data as edata
    device = common.resolve_device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    img_size = img_size or getattr(model, "img_size", None) or model.patch_embed.img_size[0]
    if data == "digits":
        from ..mae import data as train_data
        xtr, ytr = train_data.load_digits(img_size, "train")
        xte, yte = train_data.load_digits(img_size, "test")
        if max_images:
            keep_tr = torch.linspace(0, len(xtr) - 1, min(max_images, len(xtr))).long()
            keep_te = torch.linspace(0, len(xte) - 1, min(max_images, len(xte))).long()
            xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
        train_batches, test_batches = _batches(xtr, ytr, batch), _batches(xte, yte, batch)
        classes = 10
    else:
        data = edata.check_data(data, data_path)
        tf = edata.eval_transform(img_size)
        tr = edata.evenly(edata.dataset(data, "train", tf, data_path), max_images)
        te = edata.evenly(edata.dataset(data, "val", tf, data_path), max_images)
        train_batches = edata.eval_loader(tr, batch, rank=0, world=1, workers=workers)
        test_batches = edata.eval_loader(te, batch, rank=0, world=1, workers=workers)
        classes = edata.same_classes(tr, te)
        edata.check_images(te, workers=workers)  # val/ is read last: its files are checked first
    ftr, ytr_d = _collect(model, train_batches, device)
    if len(ftr) < 2:
        raise ValueError(f"the linear probe needs at least 2 train images (its BatchNorm "
                         f"normalises over them), got {len(ftr)}; give more images")
    finite = int(torch.isfinite(ftr).all(1).sum())
    if finite < len(ftr):
        raise ValueError(f"the encoder's CLS features are not finite for {len(ftr) - finite} of "
                         f"{len(ftr)} train images: its weights are not finite or overflow; "
                         f"evaluate a checkpoint from before the divergence")
    head = train_probe(ftr, ytr_d, classes=classes, epochs=probe_epochs, seed=seed)
    bank = F.normalize(ftr, dim=1)
    rank = GramRank()
    n = lin = nn_ok = 0
    with torch.no_grad():
        for x, y in test_batches:
            f = _features(model, x.to(device)).float()
            y = y.to(device)
            lin += int((head(f).argmax(1) == y).sum())
            if knn:
                nn_ok += int((knn_predict(bank, ytr_d, f, classes=classes) == y).sum())
            rank.add(f)
            n += len(y)
    model.train(was_training)
    return {"linear_acc": lin / n, "knn_acc": nn_ok / n if knn else None,
            "eff_rank": rank.value(), "n_train": len(ftr), "n_test": n, "width": ftr.shape[1]}


def load_model(path: str):
    """(the trainer's MaskedAutoencoder, training args dict) from a training checkpoint."""
    import inspect

    from ..mae.model import MaskedAutoencoder, create_model
    state = torch.load(path, map_location="cpu", weights_only=True)
    a, weights = state["args"], state["model"]
    linears = sorted(k for k in weights if k.startswith("head.") and k.endswith(".weight")
                     and weights[k].ndim == 2)
    kw = {"num_classes": weights[linears[-1]].shape[0] if linears else 0}
    if "head" in inspect.signature(MaskedAutoencoder.__init__).parameters and linears:
        kw["head"] = "bn-linear" if "head.0.running_mean" in weights else "linear"
    model = create_model(a["model"], img_size=a["img_size"], mask_ratio=a["mask_ratio"],
                         norm_pix_loss=a["norm_pix_loss"], cls_norm=a["cls_norm"], **kw)
    model.load_state_dict(weights)
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
