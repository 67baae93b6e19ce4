"""Run outputs: metrics.jsonl (read, trim on resume), curves.png, the encoder export."""
from __future__ import annotations

import json
import os


def trim_metrics(path: str, first_step: int) -> None:
    """Drop metric lines of steps >= first_step (written after the checkpoint we resume)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] < first_step]
    with open(path, "w") as f:
        f.writelines(keep)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_metrics(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def plot_curves(metrics_path: str, png_path: str, title: str = "") -> str | None:
    """PNG of the logged curves (loss parts, lr, effective rank) against the step."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("loss_mae", "L_MAE"), ("loss_reg", "R"), ("loss_ce", "online CE"),
              ("eff_rank", "effective rank (CLS)"), ("lr", "lr"), ("img_per_s", "img/s")]
    panels = [(k, t) for k, t in panels if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def export(model, run_dir: str) -> str:
    """encoder.safetensors (timm names) and encoder.json (timm kwargs) in ``run_dir``."""
    from ..mae.model import export_encoder, timm_kwargs
    enc = os.path.join(run_dir, "encoder.safetensors")
    export_encoder(model, enc)
    with open(os.path.join(run_dir, "encoder.json"), "w") as f:
        json.dump({"timm_name": model.preset.timm_name, "timm_kwargs": timm_kwargs(model)},
                  f, indent=1)
    return enc
