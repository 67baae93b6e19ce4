"""Trainer throughput: img/s and step-time breakdown of M-MAE pretraining steps (synthetic data).

Configurations per model (ViT-B/16 and ViT-L/16 at 224 by default), each eager and compiled
(``torch.compile`` of the model; the regulariser is called outside it):

    ours      --reg none                           the MAE step alone (bf16 autocast)
    ours      --reg tcr --backend official-eager   + mmae_fast.baselines.official_tcr
    ours      --reg tcr --backend auto             + mmae_fast.tcr_loss (fastest backend)
    official  --reg tcr --backend official-eager   the anchor, eager only: attention without SDPA
              (timm's explicit softmax(QKᵀ)V path, ``fused_attn = False``), fp16 autocast with
              loss scaling, the official loss

Step = forward (MAE loss and CLS features) | regulariser forward | backward (all of it) |
optimizer (AdamW), each bracketed by CUDA events (perf_counter on the CPU). The regulariser's
share of the step is its forward + backward timed alone on the step's CLS features, over the
median step time.

    python bench/train.py --quick                          # tiny model on the CPU
    python bench/train.py --device cuda                    # ViT-B/16 and ViT-L/16
    python bench/train.py --device cuda --models vit-b16 --batch 256

``--time-limit S`` starts no configuration after S seconds (the rest are written as skipped).

Writes ``<out>/<device slug>/train-<time>.json`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import common
from mmae_fast import baselines, tcr_loss
from mmae_fast.mae import errors

SCHEMA = "mmae_fast.bench.train"
#: bench name -> preset of the trainer's model factory (mmae_fast.mae.model)
MODELS = {"vit-b16": "vit_base_patch16", "vit-l16": "vit_large_patch16", "tiny": "tiny"}
#: official M-MAE settings: lambda = 1e-2; mu = 1 (ViT-B), 3 (ViT-L)
MU = {"vit-b16": 1.0, "vit-l16": 3.0, "tiny": 1.0}
CSV_FIELDS = ("model", "variant", "reg", "backend", "compiled", "batch", "img_size", "status",
              "reason", "median_ms", "min_ms", "iqr_ms", "img_per_s", "forward_ms", "reg_fwd_ms",
              "backward_ms", "optimizer_ms", "reg_ms", "reg_share_pct", "peak_mem_bytes",
              "steps", "times_ms")


@dataclasses.dataclass(frozen=True)
class Config:
    model: str
    variant: str          # "ours" | "official"
    reg: str              # "none" | "tcr"
    backend: str | None   # "official-eager" | "auto" | None
    compiled: bool


def configurations(models, compile_modes) -> list[Config]:
    out = []
    for model in models:
        for compiled in compile_modes:
            out += [Config(model, "ours", "none", None, compiled),
                    Config(model, "ours", "tcr", "official-eager", compiled),
                    Config(model, "ours", "tcr", "auto", compiled)]
        if False in compile_modes:
            out.append(Config(model, "official", "tcr", "official-eager", False))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = errors.OneLineParser(prog="mmae-bench train", description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, img 32, batch 8, CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="+", choices=list(MODELS))
    p.add_argument("--batch", type=int, help="images per step (default 128 GPU, 8 quick)")
    p.add_argument("--img-size", type=int, help="default 224 (quick: 32)")
    p.add_argument("--compile", nargs="+", choices=("eager", "compiled"),
                   help="default: both (quick: eager)")
    p.add_argument("--lamb", type=float, default=1e-2, help="regulariser weight (official 1e-2)")
    p.add_argument("--steps", type=int, help="timed steps (default 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5 GPU, 1 CPU)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no configuration after S seconds; the rest are written as "
                        "skipped")
    p.add_argument("--out", default=str(common.REPO_ROOT / "bench" / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0 <= args.lamb < float("inf"):
        p.error(f"--lamb must be a finite number >= 0, got {args.lamb}")
    common.check_limits(p, args, (("batch", 1), ("img_size", 1), ("steps", 1), ("warmup", 0),
                                  ("threads", 1)))
    if args.device is None:
        args.device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    cpu = args.device == "cpu"
    args.models = args.models or (["tiny"] if args.quick else ["vit-b16", "vit-l16"])
    args.batch = args.batch or (8 if args.quick else 128)
    args.img_size = args.img_size or (32 if args.quick else 224)
    args.compile = args.compile or (["eager"] if args.quick else ["eager", "compiled"])
    args.steps = args.steps or (3 if cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 5)
    return args


# ----------------------------------------------------------------------------- the model
def _model_module():
    """The trainer's model module (ImportError while it is absent: the rows are skipped)."""
    from mmae_fast.mae import model
    return model


def create_model(name: str, img_size: int, variant: str) -> torch.nn.Module:
    """The trainer's MAE model (``mmae_fast.mae.model.create_model``): ``model(imgs)`` returns
    ``(mae_loss, cls)`` with ``cls`` the (batch, width) CLS features the regulariser takes.
    The official variant turns off SDPA in every timm attention module (``fused_attn``)."""
    net = _model_module().create_model(MODELS[name], img_size=img_size)
    if variant == "official":
        attention = [m for m in net.modules() if hasattr(m, "fused_attn")]
        if not attention:
            raise RuntimeError("the model has no attention module with a fused_attn switch "
                               "(timm's Attention); the official variant cannot turn SDPA off")
        for module in attention:
            module.fused_attn = False
    return net


def regulariser(cfg: Config, mu: float):
    """cls -> R, or None for ``--reg none``."""
    if cfg.reg == "none":
        return None
    if cfg.backend == "official-eager":
        return lambda cls: baselines.official_tcr(cls, mu)
    return lambda cls: tcr_loss(cls, mu, backend=cfg.backend)


class Clock:
    """Marks on a GPU stream (CUDA events) or the host clock; elapsed ms between marks."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def spans(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def empty_row(cfg: Config, args) -> dict:
    """The configuration's row before it runs."""
    return dict(dataclasses.asdict(cfg), batch=args.batch, img_size=args.img_size, status="ok",
                reason=None, times_ms=[], steps=0, **common.summary([]), img_per_s=None,
                forward_ms=None, reg_fwd_ms=None, backward_ms=None, optimizer_ms=None,
                reg_ms=None, reg_share_pct=None, peak_mem_bytes=None)


def run_config(cfg: Config, args, device: torch.device) -> dict:
    row = empty_row(cfg, args)
    try:
        net = create_model(cfg.model, args.img_size, cfg.variant).to(device)
    except ImportError as exc:
        return row | {"status": "skipped",
                      "reason": f"the trainer's model factory is not available ({exc})"}
    except RuntimeError as exc:
        return row | {"status": "error", "reason": str(exc)}
    mu, reg = MU[cfg.model], regulariser(cfg, MU[cfg.model])
    half = torch.float16 if cfg.variant == "official" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=half == torch.float16 and
                                  device.type == "cuda")
    opt = torch.optim.AdamW(net.parameters(), lr=1.5e-4, weight_decay=0.05)
    fwd = torch.compile(net) if cfg.compiled else net
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen).to(device)

    def step(clock: Clock):
        clock.mark()
        with torch.autocast(device.type, dtype=half):
            loss, cls = fwd(imgs)
        clock.mark()
        if reg is not None:
            loss = loss + args.lamb * reg(cls)
        clock.mark()
        scaler.scale(loss).backward()
        clock.mark()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        clock.mark()
        return cls

    try:
        for _ in range(args.warmup):
            step(Clock(device))
        common.synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        parts = []
        for _ in range(args.steps):
            clock = Clock(device)
            cls = step(clock)
            parts.append(clock.spans())
        if device.type == "cuda":
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
        if reg is not None:  # the regulariser alone, forward + backward, on the step's features
            feats = [cls.detach().clone().requires_grad_(True)]
            reg_times = common.time_calls(
                lambda c: torch.autograd.grad(reg(c), c), feats, device,
                warmup=2, reps=max(5, args.steps))
            row["reg_ms"] = common.summary(reg_times)["median_ms"]
    except Exception as exc:  # noqa: BLE001 - a failing configuration is a result
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    times = [sum(p) for p in parts]
    stats = common.summary(times)
    med = lambda i: common.summary([p[i] for p in parts])["median_ms"]  # noqa: E731
    row.update(stats, times_ms=times, steps=len(times), img_per_s=args.batch * 1e3 /
               stats["median_ms"], forward_ms=med(0), reg_fwd_ms=med(1), backward_ms=med(2),
               optimizer_ms=med(3))
    if row["reg_ms"] is not None:
        row["reg_share_pct"] = 100.0 * row["reg_ms"] / stats["median_ms"]
    return row


def run(args) -> tuple[Path, Path]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu (or --quick)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = common.environment(device)
    todo = configurations(args.models, [c == "compiled" for c in args.compile])
    rows = []
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")}
    payload = {"schema": SCHEMA, "schema_version": common.SCHEMA_VERSION, "meta": meta,
               "config": config}
    stem = "train" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    stem, folder = f"{stem}-{common.timestamp()}", common.result_dir(args.out, device)

    def write(complete: bool):
        """(Re)write the files, after every configuration (a killed run keeps what finished)."""
        return common.write_results(folder, stem, payload | {"complete": complete}, rows,
                                    CSV_FIELDS)

    iterator = todo
    if not args.no_progress:
        from tqdm import tqdm
        iterator = tqdm(todo, desc="train bench", unit="config", dynamic_ncols=True)
    start = time.monotonic()
    for cfg in iterator:
        limit = getattr(args, "time_limit", None)
        if limit is not None and time.monotonic() - start > limit:
            rows.append(empty_row(cfg, args) | {
                "status": "skipped",
                "reason": f"time limit: --time-limit {limit:g} s was reached before it"})
            continue
        rows.append(run_config(cfg, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write(False)
    return write(True)


def main(argv=None) -> int:
    json_path, csv_path = run(parse_args(argv))
    print(f"wrote {json_path}\nwrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
