"""The project's performance targets, measured from the GPU result files (bench/README.md).

Per GPU device folder (newest first), from its merged ``entropy*.json`` rows (bf16, fwd+bwd) and
``train*.json`` rows, with ``best`` = the fastest of ours (any backend, estimator exact or series):

=========================================  =========  ===========================================
target                                     needed     measured as
=========================================  =========  ===========================================
ours vs ``official``, 1024², 4096×768, μ3  ≥ 30x      official median / best median
ours vs ``cholesky``, same shapes          ≥ 10x      cholesky median / best median
ours vs the best ``*-compile`` baseline    ≥ 2x       min(compiled medians) / best median
ours at m ≥ 16384                          ≤ 2x floor best median / roofline floor (exact)
exact vs ``official``, 1024², 4096×768 μ3  ≥ 5x       official median / best exact median
trainer ``--reg tcr`` (auto) vs ``none``   ≥ 99.5%    img/s(tcr, auto) / img/s(none), same
                                                      model, batch, compile mode
=========================================  =========  ===========================================

Eager per-call medians; where both sides also have CUDA-graph medians, that ratio is shown too.
Every line names the device, the commit (``+dirty`` when the tree differed) and the file(s).
"""
from __future__ import annotations

from pathlib import Path

from bench import common

HEAD_SHAPES = ((1024, 1024, 3.0), (4096, 768, 3.0))
OURS = ("reference", "cpu", "triton", "cuda")
DTYPE, MODE = "bf16", "fwd+bwd"


def _source(rows: list[dict]) -> str:
    """``device · commit · file[, file]`` of the rows a number was computed from."""
    parts = []
    for r in rows:
        meta = r["_meta"]
        git = meta.get("git") or {}
        commit = (git.get("commit") or "unknown")[:8] + ("+dirty" if git.get("dirty") else "")
        text = f"{meta['device_name']} · {commit} · `{r['_file']}`"
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def _ok(row, key="median_ms") -> bool:
    return row is not None and row["status"] == "ok" and row.get(key) is not None


def _ratio(num: dict, den: dict, key: str) -> float | None:
    return num[key] / den[key] if _ok(num, key) and _ok(den, key) else None


def _label(row: dict) -> str:
    return f"{row['provider']}·{row['estimator']}" if row["provider"] in OURS else row["provider"]


def _fmt(x: float | None, unit: str = "x") -> str:
    return "–" if x is None else f"{x:.3g}{unit}"


def _line(target, shape, need, ratio, graph_ratio, met, rows) -> dict:
    return {"target": target, "shape": shape, "need": need, "ratio": ratio,
            "graph_ratio": graph_ratio, "met": met, "source": _source(rows)}


def entropy_targets(rows: list[dict]) -> list[dict]:
    """The regulariser targets from merged entropy rows (each with ``_file`` and ``_meta``)."""
    sel = [r for r in rows if r["dtype"] == DTYPE and r["mode"] == MODE]
    by_shape: dict[tuple, list[dict]] = {}
    for r in sel:
        by_shape.setdefault((r["m"], r["d"], float(r.get("mu") or 1.0)), []).append(r)
    out = []
    for shape in sorted(by_shape, key=lambda s: (s[0] * s[1], s)):
        group = by_shape[shape]
        name = f"{shape[0]}×{shape[1]}, μ {shape[2]:g}"
        ours = [r for r in group if r["provider"] in OURS and r["estimator"] != "taylor"]
        best = min((r for r in ours if _ok(r)), key=lambda r: r["median_ms"], default=None)
        best_g = min((r for r in ours if _ok(r, "graph_median_ms")),
                     key=lambda r: r["graph_median_ms"], default=None)
        exact = min((r for r in ours if _ok(r) and r["estimator"] == "exact"),
                    key=lambda r: r["median_ms"], default=None)
        find = {r["provider"]: r for r in group if r["provider"] not in OURS}
        if shape in HEAD_SHAPES and best is not None:
            for base, need in (("official", 30.0), ("cholesky", 10.0)):
                if _ok(find.get(base)):
                    ratio = _ratio(find[base], best, "median_ms")
                    out.append(_line(f"ours ({_label(best)}) vs `{base}`", name, f"≥ {need:g}x",
                                     ratio, _ratio(find[base], best_g, "graph_median_ms")
                                     if best_g else None, ratio >= need, [find[base], best]))
            compiled = [r for p, r in find.items() if p.endswith("-compile") and _ok(r)]
            if compiled:
                fastest = min(compiled, key=lambda r: r["median_ms"])
                ratio = _ratio(fastest, best, "median_ms")
                out.append(_line(f"ours ({_label(best)}) vs best compiled (`{fastest['provider']}`)",
                                 name, "≥ 2x", ratio, None, ratio >= 2.0, [fastest, best]))
            if exact is not None and _ok(find.get("official")):
                ratio = _ratio(find["official"], exact, "median_ms")
                out.append(_line(f"exact ({_label(exact)}) vs `official`", name, "≥ 5x", ratio,
                                 None, ratio >= 5.0, [find["official"], exact]))
        if shape[0] >= 16384 and best is not None:
            floor = next((r["floor_ms"] for r in group if r["estimator"] == "exact"
                          and r.get("floor_ms")), None)
            if floor:
                ratio = best["median_ms"] / floor
                graph = best_g["graph_median_ms"] / floor if best_g else None
                out.append(_line(f"ours ({_label(best)}) / roofline floor", name, "≤ 2x", ratio,
                                 graph, ratio <= 2.0, [best]))
    return out


def train_targets(rows: list[dict]) -> list[dict]:
    """``--reg tcr --backend auto`` img/s over ``--reg none`` img/s per model/batch/compile."""
    out = []
    keyed = {(r["model"], r["batch"], r["img_size"], bool(r.get("compiled")), r["variant"],
              r["reg"], r.get("backend")): r for r in rows}
    for (model, batch, img, compiled, variant, reg, backend), tcr in sorted(
            keyed.items(), key=lambda kv: str(kv[0])):
        if (variant, reg, backend) != ("ours", "tcr", "auto"):
            continue
        none = keyed.get((model, batch, img, compiled, "ours", "none", None))
        if not (_ok(tcr, "img_per_s") and _ok(none, "img_per_s")):
            continue
        ratio = 100.0 * tcr["img_per_s"] / none["img_per_s"]
        out.append(_line("trainer `--reg tcr` (auto) / `--reg none` img/s",
                         f"{model} b{batch}{' compiled' if compiled else ' eager'}", "≥ 99.5%",
                         ratio, None, ratio >= 99.5, [tcr, none]))
    return out


def _tagged(folder: Path, prefix: str) -> list[dict]:
    """Rows of every ``prefix*.json`` in ``folder``, oldest file first, each with ``_file`` and
    ``_meta``; only GPU result files."""
    payloads = sorted(common.load_results([folder], prefix), key=lambda p: p["meta"]["date"])
    return [r | {"_file": Path(p["_path"]).name, "_meta": p["meta"]} for p in payloads
            if p["meta"].get("device") == "cuda" for r in p["results"]]


def section(folders: list[Path], entropy_rows) -> str:
    """Markdown: one targets table per GPU folder, newest first; ``entropy_rows(folder)`` gives
    the folder's merged entropy rows (``bench.plot.merged_entropy``)."""
    tables = []
    for folder in folders:
        erows = [r for r in entropy_rows(folder) if r["_meta"].get("device") == "cuda"]
        train: dict[tuple, dict] = {}
        for r in _tagged(folder, "train"):  # a later file replaces the same configuration
            train[(r["model"], r["variant"], r["reg"], r.get("backend"), r.get("compiled"),
                   r["batch"], r["img_size"])] = r
        lines = entropy_targets(erows) + train_targets(list(train.values()))
        if not lines:
            continue
        newest = max(r["_meta"]["date"] for r in erows + list(train.values()))
        body = [f"**{folder.name}** (newest result {newest})\n",
                "| target | shape | needed | measured | CUDA graph | met | from |",
                "|---|---|---|---|---|---|---|"]
        for t in lines:
            unit = "%" if t["need"].endswith("%") else "x"
            met = "yes" if t["met"] else "**no**"
            body.append(f"| {t['target']} | {t['shape']} | {t['need']} | {_fmt(t['ratio'], unit)}"
                        f" | {_fmt(t['graph_ratio'], unit)} | {met} | {t['source']} |")
        tables.append((newest, "\n".join(body) + "\n"))
    if not tables:
        return ""
    tables.sort(key=lambda t: t[0], reverse=True)
    head = ("### Targets\n\nMeasured ratios per project target, newest GPU results first "
            "(bf16, fwd+bwd; `ours` = the fastest of our backends with estimator exact or series; "
            "ratios from eager per-call medians, the CUDA-graph column from graph-replay medians "
            "where both sides have one). Written by `bench/plot.py` from the files named in the "
            "last column.\n")
    return "\n".join([head] + [t for _, t in tables])
