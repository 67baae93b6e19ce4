"""Plots and the markdown tables of bench/README.md, generated from the result files.

    python bench/plot.py                         # every bench/results/<device>/ folder
    python bench/plot.py bench/results/cuda-nvidia-h100-80gb-hbm3 --d 1024 --dtype fp16

Per device folder, merging its ``entropy*.json`` (a later file replaces the same case of an
earlier one) and ``train*.json``:

* ``entropy_time.png``: median time vs m per provider, one panel per (mode, dtype), at one d;
* ``entropy_summary.png``: speed-up over ``official`` (eager) and achieved roofline fraction,
  per m, for one (d, dtype, mode) ("headline": d 768, bf16, fwd+bwd when present);
* ``train.png``: trainer img/s per configuration (when a train result exists);
* the tables between the GENERATED markers of bench/README.md (``--readme``), headed by the
  project's targets (``bench.targets``) measured on the newest GPU results.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, targets  # noqa: E402
from mmae_fast.mae import errors  # noqa: E402

RESULTS = common.REPO_ROOT / "bench" / "results"
README = common.REPO_ROOT / "bench" / "README.md"
BEGIN, END = "<!-- BEGIN GENERATED RESULTS -->", "<!-- END GENERATED RESULTS -->"
COLORS = {"official": "black", "official-compile": "0.55", "cholesky": "tab:blue",
          "cholesky-compile": "lightsteelblue", "taylor-eager": "tab:brown",
          "taylor-eager-compile": "tan", "reference": "tab:green", "cpu": "tab:olive",
          "triton": "tab:orange", "cuda": "tab:red"}
LINESTYLES = {"exact": "-", "series": "--", "taylor": ":"}
OURS = ("reference", "cpu", "triton", "cuda")


# ----------------------------------------------------------------------------- loading
def label(row: dict) -> str:
    """Column/legend name: baselines by name, ours as ``backend·estimator``."""
    return f"{row['provider']}·{row['estimator']}" if row["provider"] in OURS else row["provider"]


def label_order(labels) -> list[str]:
    """Baselines first (in COLORS order), then ours by backend and estimator."""
    rank = {p: i for i, p in enumerate(COLORS)}
    est = {e: i for i, e in enumerate(LINESTYLES)}
    return sorted(labels, key=lambda s: (rank.get(s.split("·")[0], 99),
                                         est.get(s.split("·")[1], 9) if "·" in s else 0))


def merged_entropy(folder: Path) -> tuple[list[dict], list[dict]]:
    """(rows, payloads) of every entropy result file in ``folder``; a later file's case replaces
    an earlier one unless it did not run there (time limit, ...). Each row gets ``_file``."""
    payloads = sorted(common.load_results([folder], "entropy"), key=lambda p: p["meta"]["date"])
    rows = {}
    for payload in payloads:
        for row in payload["results"]:
            key = (row["provider"], row["estimator"], row["m"], row["d"], row["dtype"],
                   row["mode"], row.get("mu"))
            if row["status"] == "skipped" and rows.get(key, {}).get("status") == "ok":
                continue
            rows[key] = row | {"_file": Path(payload["_path"]).name, "_meta": payload["meta"]}
    return list(rows.values()), payloads


def timed(row: dict, key: str = "median_ms") -> bool:
    """The row ran and has the timing ``key`` (eager ``median_ms`` or ``graph_median_ms``)."""
    return row["status"] == "ok" and row.get(key) is not None


def pick(values, preferred):
    """``preferred`` if present among ``values``, else the first value (sorted)."""
    values = sorted(set(values), key=str)
    return preferred if preferred in values else (values[0] if values else None)


def headline(rows, d=None, dtype=None, mode=None) -> tuple:
    ok = [r for r in rows if r["status"] == "ok"] or rows
    return (d or pick([r["d"] for r in ok], 768), dtype or pick([r["dtype"] for r in ok], "bf16"),
            mode or pick([r["mode"] for r in ok], "fwd+bwd"))


# ----------------------------------------------------------------------------- plots
def _style(lab: str) -> dict:
    provider, _, est = lab.partition("·")
    ls = LINESTYLES.get(est, "-.") if est else ("-." if provider.endswith("-compile") else "-")
    return {"color": COLORS.get(provider, "tab:purple"), "linestyle": ls, "marker": "o",
            "markersize": 3}


def plot_time(rows, d, path: Path, title: str) -> bool:
    """Median time vs m, one panel per (mode, dtype), lines per provider."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if timed(r) and r["d"] == d]
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in ok)]
    dtypes = [t for t in common.DTYPES if any(r["dtype"] == t for r in ok)]
    if not ok:
        return False
    fig, axes = plt.subplots(len(modes), len(dtypes), squeeze=False, sharex=True,
                             figsize=(4.2 * len(dtypes) + 2.4, 3.3 * len(modes)),
                             layout="constrained")
    for i, mode in enumerate(modes):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            sel = [r for r in ok if r["mode"] == mode and r["dtype"] == dtype]
            for lab in label_order({label(r) for r in sel}):
                pts = sorted((r["m"], r["median_ms"]) for r in sel if label(r) == lab)
                ax.plot(*zip(*pts), label=lab, **_style(lab))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _plain_ticks(ax, x=sorted({r["m"] for r in sel}))
            ax.set_title(f"{mode}, {dtype}, d={d}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if i == len(modes) - 1:
                ax.set_xlabel("m (batch rows)")
            if j == 0:
                ax.set_ylabel("median time (ms)")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = label_order(handles)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside right center", fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plain_ticks(ax, x=None) -> None:
    """Log axes labelled 0.5, 2, 300 rather than 5x10^-1; ``x``: the tick positions of x."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if x:
        ax.set_xticks(x, [str(v) for v in x])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _bars(ax, groups, series: dict, ylabel: str, ref_line=None, plain=True) -> None:
    """Grouped bars: x groups (m values), one bar per label in ``series`` {label: {m: y}}."""
    labs = label_order(series)
    width = 0.8 / max(1, len(labs))
    for k, lab in enumerate(labs):
        xs = [i + (k - (len(labs) - 1) / 2) * width for i, _ in enumerate(groups)]
        ys = [series[lab].get(g, math.nan) for g in groups]
        st = _style(lab)
        ax.bar(xs, ys, width, label=lab, color=st["color"],
               hatch={"--": "//", ":": "..", "-.": "xx"}.get(st["linestyle"], None),
               edgecolor="white", linewidth=0.3)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_yscale("log")
    if plain:
        _plain_ticks(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if ref_line is not None:
        ax.axhline(ref_line, color="black", linewidth=0.8)


def plot_summary(rows, d, dtype, mode, path: Path, title: str) -> bool:
    """Speed-up over eager ``official`` and achieved roofline fraction, per m."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if timed(r) and (r["d"], r["dtype"], r["mode"]) ==
           (d, dtype, mode)]
    if not sel:
        return False
    groups = sorted({r["m"] for r in sel})
    official = {r["m"]: r["median_ms"] for r in sel if r["provider"] == "official"}
    speed, frac, err = defaultdict(dict), defaultdict(dict), defaultdict(dict)
    for r in sel:
        if r["provider"] != "official" and r["m"] in official:
            speed[label(r)][r["m"]] = official[r["m"]] / r["median_ms"]
        if r.get("roofline_fraction"):
            frac[label(r)][r["m"]] = r["roofline_fraction"]
        err[label(r)][r["m"]] = max(r["rel_err"], 1e-9)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), layout="constrained")
    _bars(axes[0], groups, speed, "speed-up over official (eager), x", ref_line=1.0)
    axes[0].set_title(f"speed-up, {mode}, {dtype}, d={d} (above 1 = faster)", fontsize=10)
    _bars(axes[1], groups, frac, "roofline floor / median time", ref_line=1.0)
    axes[1].set_title("fraction of the roofline floor (1 = at the floor)", fontsize=10)
    _bars(axes[2], groups, err, "|R - R_exact| / |R_exact|", plain=False)
    axes[2].set_title("relative error vs exact float64 (floored at 1e-9)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("m (batch rows)")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_train(rows, path: Path, title: str) -> bool:
    """Trainer throughput (img/s) per configuration, with the regulariser share annotated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(ok) + 1.5))
    names = [train_label(r) for r in ok]
    ax.barh(range(len(ok)), [r["img_per_s"] for r in ok],
            color=["0.4" if r["variant"] == "official" else "tab:green" for r in ok])
    for i, r in enumerate(ok):
        share = r.get("reg_share_pct")
        if share is not None:
            ax.text(r["img_per_s"], i, f"  reg {share:.1f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(ok)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (median step)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def train_label(r: dict) -> str:
    backend = f" {r['backend']}" if r.get("backend") else ""
    return (f"{r['model']} {r['variant']} reg={r['reg']}{backend}"
            f"{' compiled' if r.get('compiled') else ''}")


# ----------------------------------------------------------------------------- tables
def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def entropy_tables(rows: list[dict]) -> str:
    """One markdown table per (dtype, mode) and timing (eager per call; CUDA graph replay when
    measured): rows (d, m), a column of median ms per provider, the floor, and the best of ours
    against official."""
    out = []
    skipped = defaultdict(set)  # reason -> labels
    for r in rows:
        if r["status"] != "ok":
            skipped[f"{r['status']}: {r['reason']}"].add(label(r))
        elif r.get("graph_status") == "error":
            skipped[f"no CUDA graph: {r['graph_reason']}"].add(label(r))
    keys = sorted({(r["dtype"], r["mode"]) for r in rows},
                  key=lambda k: (list(common.DTYPES).index(k[0]), k[1]))
    for dtype, mode in keys:
        for key, what in (("median_ms", "median ms per call (eager)"),
                          ("graph_median_ms", "median ms per CUDA graph replay")):
            out += _entropy_table([r for r in rows if (r["dtype"], r["mode"]) == (dtype, mode)],
                                  key, f"**{mode}, {dtype}** — {what}, lower is better\n")
    out.append("`–`: not in the sweep of any result file here, or skipped (reasons below); "
               "`err`: the provider raised (the reason is in the result file).\n")
    for reason, labs in sorted(skipped.items()):
        out.append(f"- not run ({', '.join(f'`{lab}`' for lab in label_order(labs))}, some or "
                   f"all shapes): {reason}")
    if skipped:
        out.append("")
    return "\n".join(out)


def _entropy_table(sel: list[dict], key: str, title: str) -> list[str]:
    """Markdown lines of one table over timing ``key``; empty if nothing has that timing."""
    out = []
    labs = label_order({label(r) for r in sel if timed(r, key)})
    if labs:
        cell = {(r["d"], r["m"], label(r)): r for r in sel}
        out.append(title)
        out.append("| d | m | " + " | ".join(labs)
                   + " | floor (exact) | ours (exact/series) vs official |")
        out.append("|---|---|" + "---|" * (len(labs) + 2))
        for d, m in sorted({(r["d"], r["m"]) for r in sel}):
            vals = [cell.get((d, m, lab)) for lab in labs]
            cells = [_fmt(v[key]) if v and timed(v, key) else
                     ("err" if v and "error" in (v["status"], v.get("graph_status")) else "–")
                     for v in vals]
            floor = next((v["floor_ms"] for v in vals if v and v["estimator"] == "exact"
                          and v.get("floor_ms")), None)
            off = cell.get((d, m, "official"))
            ours = [v for v in vals if v and timed(v, key) and v["provider"] in OURS
                    and v["estimator"] != "taylor"]  # Taylor is not accurate for every input
            best = min(ours, key=lambda v: v[key]) if ours else None
            speed = (f"{off[key] / best[key]:.2f}x ({label(best)})"
                     if best and off and timed(off, key) else "–")
            out.append(f"| {d} | {m} | " + " | ".join(cells) + f" | {_fmt(floor)} | {speed} |")
        out.append("")
    return out


def train_table(rows: list[dict]) -> str:
    out = ["| model | variant | reg | backend | compiled | img/s | step ms | reg ms | reg % |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['model']} | {r['variant']} | {r['reg']} | {r.get('backend') or '–'}"
                       f" | {r.get('compiled')} | {r['status']}: {r['reason']} | | | |")
            continue
        out.append(f"| {r['model']} | {r['variant']} | {r['reg']} | {r.get('backend') or '–'} | "
                   f"{r.get('compiled')} | {_fmt(r['img_per_s'], 4)} | {_fmt(r['median_ms'])} | "
                   f"{_fmt(r.get('reg_ms'))} | {_fmt(r.get('reg_share_pct'), 2)} |")
    return "\n".join(out) + "\n"


def _meta_lines(payloads: list[dict]) -> str:
    """One line per result file: device, versions, commit, date, the same-run calibration."""
    lines = []
    for payload in payloads:
        meta, calib = payload["meta"], payload.get("calibration") or {}
        git = meta.get("git") or {}
        text = (f"- `{Path(payload['_path']).name}`: {meta['device_name']} · driver "
                f"{meta.get('driver')} · torch {meta['torch']} · CUDA {meta.get('cuda')} · triton "
                f"{meta.get('triton')} · CPU threads {meta.get('cpu_threads')} · commit "
                f"{(git.get('commit') or '')[:10] or 'none'}"
                f"{' (dirty)' if git.get('dirty') else ''} · {meta['date']}")
        if calib.get("gemm_tflops"):
            rates = ", ".join(f"{k} {v:.3g}" for k, v in sorted(calib["gemm_tflops"].items()))
            text += (f"; measured in the run: GEMM TFLOP/s ({calib['gemm_n']}²) {rates}, copy "
                     f"{calib['copy_gbps']:.3g} GB/s, one-element op {calib['launch_us']:.3g} µs")
        lines.append(text)
    return "\n".join(lines) + "\n"


def device_section(folder: Path, link: str, d=None, dtype=None, mode=None) -> str:
    """Plots and markdown for one device folder (``link``: the folder as the markdown sees it)."""
    parts = [f"### {folder.name}\n"]
    rows, payloads = merged_entropy(folder)
    if rows:
        hd, hdt, hm = headline(rows, d, dtype, mode)
        title = payloads[-1]["meta"]["device_name"]
        parts += ["#### Kernel microbenchmark (`bench/entropy.py`)\n", _meta_lines(payloads)]
        if plot_time(rows, hd, folder / "entropy_time.png", f"TCR regulariser, {title}"):
            parts.append(f"![time vs m]({link}/entropy_time.png)\n")
        if plot_summary(rows, hd, hdt, hm, folder / "entropy_summary.png", f"TCR, {title}"):
            parts.append(f"![speed-up, roofline fraction, error]({link}/entropy_summary.png)\n")
        parts.append(entropy_tables(rows))
    train_payloads = common.load_results([folder], "train")
    if train_payloads:
        trows = list({(r["model"], r["variant"], r["reg"], r["backend"], r["compiled"],
                       r["batch"], r["img_size"]): r  # a later file replaces an earlier row
                      for p in train_payloads for r in p["results"]}.values())
        parts += ["#### Trainer (`bench/train.py`)\n", _meta_lines(train_payloads)]
        if plot_train(trows, folder / "train.png", f"trainer throughput, "
                                                   f"{train_payloads[-1]['meta']['device_name']}"):
            parts.append(f"![trainer throughput]({link}/train.png)\n")
        parts.append(train_table(trows))
    kernels = newest(folder, "kernels-*.md")
    if kernels is not None:  # bench/kernel_table.py's markdown, without its title line
        body = kernels.read_text().split("\n", 1)[-1].strip()
        parts += [f"#### Kernel table (`bench/kernel_table.py`, `{kernels.name}`)\n", body + "\n"]
    check = newest(folder, "gpu-check-*.md")
    if check is not None:
        parts += [f"#### Last `make gpu-check` (`{check.name}`)\n", check.read_text()]
    return "\n".join(parts)


def newest(folder: Path, pattern: str) -> Path | None:
    """The file matching ``pattern`` with the latest UTC time stamp in its name."""
    stamp = lambda p: (re.findall(r"\d{8}T\d{6}Z", p.name) or [""])[-1]  # noqa: E731
    files = sorted(folder.glob(pattern), key=stamp)
    return files[-1] if files else None


def update_readme(readme: Path, body: str) -> None:
    """Replace the text between the GENERATED markers (append them if absent)."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{BEGIN}\n<!-- written by bench/plot.py from bench/results; do not edit -->\n\n" \
            f"{body}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def main(argv=None) -> int:
    p = errors.OneLineParser(prog="mmae-bench plot", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="device folders (default: all under bench/results)")
    p.add_argument("--readme", default=str(README),
                   help="markdown file to update ('' to skip)")
    p.add_argument("--d", type=int, help="d of the plots (default 768 if present)")
    p.add_argument("--dtype", choices=list(common.DTYPES), help="dtype of the summary plot")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd"), help="mode of the summary plot")
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.folders] or (
        sorted(f for f in RESULTS.iterdir() if f.is_dir()) if RESULTS.exists() else [])
    base = Path(args.readme).resolve().parent if args.readme else Path.cwd()
    sections = [device_section(f, Path(os.path.relpath(f.resolve(), base)).as_posix(), args.d,
                               args.dtype, args.mode) for f in folders]
    # a folder with nothing to plot or tabulate (bench/results/model: the cost model's
    # predictions) gets no section
    sections = [s for s, f in zip(sections, folders) if s.strip() != f"### {f.name}"]
    for f in folders:
        print(f"plotted {f}")
    goals = targets.section(folders, lambda f: merged_entropy(f)[0])
    if args.readme:
        update_readme(Path(args.readme), "\n".join(([goals] if goals else []) + sections)
                      or "No results yet.\n")
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
