"""``scripts/gpu_check.py`` (``make gpu-check``) without a GPU: the CPU smoke run and its result
files, the budget logic (a stage that would overrun is skipped, a failing stage does not stop
the next), the subprocess deadline, CUDA-graph timing guarded on the CPU, the time limits of the
benches, the targets table, and the MMAE_FAST_REQUIRE_GPU hook of tests/conftest.py."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import common, entropy, kernel_table, plot, targets, train  # noqa: E402
from tests import independent as ind  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One CPU smoke run, in process, as ``make gpu-check DEVICE=cpu`` runs it."""
    out = tmp_path_factory.mktemp("gpu-check")
    threads = torch.get_num_threads()
    # a budget no slow machine reaches: the stage windows are tested on a fake clock elsewhere
    rc = gpu_check.main(["--device", "cpu", "--smoke", "--budget", "3600", "--out", str(out),
                         "--export", str(out.parent / (out.name + "-export"))])
    assert torch.get_num_threads() == threads  # the benches' --threads 1 did not leak
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    (summary,) = folder.glob("gpu-check-*.json")
    return rc, folder, json.loads(summary.read_text())


def test_smoke_passes_and_writes_the_summary(smoke):
    rc, folder, payload = smoke
    assert rc == 0 and payload["passed"] is True, payload["stages"]
    assert payload["schema"] == gpu_check.SCHEMA and payload["schema_version"] >= 1
    meta = payload["meta"]
    for key in ("device_name", "device_slug", "torch", "cuda", "triton", "git", "date",
                "available_backends"):
        assert key in meta, key
    assert folder.name == meta["device_slug"] and "reference" in meta["available_backends"]
    assert payload["config"]["smoke"] is True and payload["config"]["budget_s"] == 3600
    stages = {s["stage"]: s for s in payload["stages"]}
    assert list(stages) == [s.name for s in gpu_check.STAGES]
    for name in ("build", "tests"):  # GPU only: skipped with a clear line, not failed
        assert stages[name]["status"] == "skipped" and stages[name]["skip"] == "device"
        assert "GPU-only" in stages[name]["detail"]
    for name in ("env", "entropy", "kernels", "train", "report"):
        assert stages[name]["status"] == "ok", stages[name]
    for stage in payload["stages"]:
        assert stage["seconds"] >= 0 and isinstance(stage["allotted_s"], float)
        assert all(Path(f).exists() for f in stage["files"]), stage
    table = (folder / Path(next(folder.glob("gpu-check-*.md"))).name).read_text()
    assert table.startswith("gpu-check PASSED") and "| entropy | ok |" in table
    assert (folder.parent / "README.md").read_text().count(plot.BEGIN) == 1
    exported = folder.parent.parent / (folder.parent.name + "-export")
    assert (exported / "results" / "README.md").exists()
    mine = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in (exported / "results" / folder.name).iterdir()) == mine


def test_smoke_entropy_rows_match_numpy(smoke):
    """The smoke's sweep: the shapes and mu asked for, eager only; values against numpy."""
    _, folder, _ = smoke
    (path,) = folder.glob("entropy-smoke-2*.json")  # (the products-only run: test below)
    payload = json.loads(path.read_text())
    assert payload["config"]["timing"] == ["eager"] and payload["complete"] is True
    assert payload["meta"]["small_products"] == "float64"
    rows = payload["results"]
    want = {(m, d, mu) for m, d, mu in map(entropy.parse_shape, gpu_check.SMOKE_SHAPES)}
    assert {(r["m"], r["d"], r["mu"]) for r in rows} == want
    assert {r["provider"] for r in rows} == {"official", "cholesky", "reference"}
    for r in rows:
        assert r["status"] == "ok" and r["mode"] == "fwd+bwd" and r["dtype"] == "bf16"
        assert r["graph_status"] is None and r["reps"] == len(r["times_ms"]) == 2
        gen = torch.Generator().manual_seed(0)
        h = entropy.features(r["m"], r["d"], "anisotropic", gen).to(torch.bfloat16).double()
        exact = ind.tcr_exact(h.numpy(), r["mu"])
        assert r["ref_exact"] == pytest.approx(exact, rel=1e-9)
        assert r["rel_err"] == pytest.approx(abs(r["value"] - exact) / abs(exact), rel=1e-6)
        # official: normalise and Gram in bf16 on the CPU; the others compute in float32
        assert r["value"] == pytest.approx(exact, rel=5e-3 if r["provider"] == "official" else
                                           2e-3 if r["estimator"] == "series" else 1e-4)


def test_smoke_products_only_small_side(smoke):
    """The smoke's second sweep: the reference stages with float32 products on the small side
    (``--small-products float32``, recorded), values against numpy within the exact contract."""
    _, folder, _ = smoke
    (path,) = folder.glob("entropy-smoke-float32-*.json")
    payload = json.loads(path.read_text())
    assert payload["meta"]["small_products"] == "float32"
    assert payload["config"]["small_products"] == "float32" and payload["complete"] is True
    rows = payload["results"]
    assert {r["provider"] for r in rows} == {"reference"} and len(rows) == 4
    for r in rows:
        assert r["status"] == "ok"
        gen = torch.Generator().manual_seed(0)
        h = entropy.features(r["m"], r["d"], "anisotropic", gen).to(torch.bfloat16).double()
        exact = ind.tcr_exact(h.numpy(), r["mu"])
        assert r["value"] == pytest.approx(exact, rel=2e-3 if r["estimator"] == "series" else 1e-4)


def test_smoke_kernel_table(smoke):
    _, folder, _ = smoke
    (path,) = folder.glob("kernels-smoke-*.json")
    payload = json.loads(path.read_text())
    assert payload["schema"] == kernel_table.SCHEMA
    rows = payload["results"]
    assert {(r["provider"], r["estimator"]) for r in rows} == {("reference", "exact"),
                                                               ("reference", "series")}
    for r in rows:
        assert r["status"] == "ok" and r["calls"] == 2
        assert r["kernels_per_call"] >= 1 and r["cpu_enqueue_ms"] > 0
        assert len(r["cpu_enqueue_times_ms"]) == 2
        top = [t["ms_per_call"] for t in r["top"]]
        assert 1 <= len(top) <= kernel_table.TOP and top == sorted(top, reverse=True)
        assert sum(top) <= r["gpu_ms_per_call"] * (1 + 1e-9)
        assert sum(t["launches_per_call"] for t in r["top"]) <= r["kernels_per_call"]
    md = path.with_suffix(".md").read_text()
    assert "| reference·exact | 48×40, 3 |" in md and "| reference·series | 96×40, 1 |" in md


def test_smoke_train_rows(smoke):
    _, folder, _ = smoke
    (path,) = folder.glob("train-quick-smoke-*.json")
    rows = json.loads(path.read_text())["results"]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["steps"] == 2 for r in rows), rows


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _ctx(tmp_path, device="cuda", skip=()):
    args = types.SimpleNamespace(device=device, smoke=False, skip=set(skip))
    ctx = gpu_check.Context(args, sys.executable, tmp_path, "T")
    ctx.clock = _Clock()
    return ctx


def test_budget_skips_a_stage_that_would_overrun(tmp_path):
    ctx, ran, writes = _ctx(tmp_path), [], []

    def takes(seconds, status="ok"):
        def fn(c, window):
            ran.append((fn.name, window))
            c.clock.now += seconds
            if status == "raise":
                raise RuntimeError("boom")
            return {"status": status, "detail": "done"}
        return fn

    stages = [gpu_check.Stage("a", 0.25, 5, takes(10)),        # window 25, leaves 15
              gpu_check.Stage("b", 0.25, 10, takes(60)),       # window 40: overruns to t=70
              gpu_check.Stage("c", 0.25, 10, takes(1)),        # deadline 75: 5 s < 10 -> skip
              gpu_check.Stage("d", 0.125, 1, takes(1, "raise")),  # deadline 87.5: runs, raises
              gpu_check.Stage("e", 0.125, 1, takes(1))]        # still runs after the error
    for s in stages:
        s.fn.name = s.name
    results = gpu_check.run_stages(ctx, stages, 100.0, write=lambda: writes.append(1),
                                   echo=lambda s: None)
    assert [name for name, _ in ran] == ["a", "b", "d", "e"]
    assert [w for _, w in ran] == pytest.approx([25.0, 40.0, 87.5 - 70, 100 - 71])
    by = {r["stage"]: r for r in results}
    assert by["c"]["status"] == "skipped" and by["c"]["skip"] == "budget"
    assert "would overrun" in by["c"]["detail"] and "needs >= 10 s" in by["c"]["detail"]
    assert by["d"]["status"] == "error" and "boom" in by["d"]["detail"]
    assert by["e"]["status"] == "ok" and len(writes) == 5
    assert not gpu_check.passed(results)
    assert gpu_check.passed([r for r in results if r["stage"] in ("a", "b", "e")])


def test_gpu_only_and_requested_skips_do_not_fail(tmp_path):
    ctx = _ctx(tmp_path, device="cpu", skip={"b"})
    fn = lambda c, w: {"status": "ok", "detail": ""}  # noqa: E731
    results = gpu_check.run_stages(
        ctx, [gpu_check.Stage("g", 0.5, 1, fn, gpu_only=True), gpu_check.Stage("b", 0.5, 1, fn)],
        10.0, echo=lambda s: None)
    assert [(r["status"], r["skip"]) for r in results] == [("skipped", "device"),
                                                           ("skipped", "requested")]
    assert gpu_check.passed(results)


def test_run_logged_kills_at_the_deadline(tmp_path):
    log = tmp_path / "x.log"
    res = gpu_check.run_logged([sys.executable, "-c", "import time; print('hi', flush=True); "
                                "time.sleep(60)"], 1.0, log)
    assert res["timed_out"] and res["rc"] is None and res["seconds"] < 20
    assert "hi" in log.read_text() and "killed after" in log.read_text()
    ok = gpu_check.run_logged([sys.executable, "-c", "raise SystemExit(3)"], 30, log)
    assert ok == ok | {"rc": 3, "timed_out": False}


def test_pytest_counts_and_backend_check():
    lines = ["FAILED tests/x.py::t - boom",
             "8 failed, 666 passed, 127 skipped, 15 warnings in 71.44s (0:01:11)"]
    assert gpu_check.pytest_counts(lines) == {"failed": 8, "passed": 666, "skipped": 127}
    assert gpu_check.pytest_counts(["1 error in 0.1s"]) == {"error": 1}
    assert gpu_check.pytest_counts(["nothing"]) == {}
    killed = ["tests/a.py::t PASSED [ 1%]", "tests/a.py::u[x-1] FAILED [ 2%]",
              "tests/a.py::v SKIPPED (why) [ 3%]", "tests/a.py::w PASSED [ 4%]"]
    assert gpu_check.pytest_counts(killed) == {"passed": 2, "failed": 1, "skipped": 1}
    assert gpu_check.check_backends(["cuda", "triton", "reference"]) is None
    msg = gpu_check.check_backends(["triton", "reference"])
    assert "FAILED" in msg and "cuda" in msg and "triton, reference" not in msg


def test_test_files_put_gpu_files_first(tmp_path):
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    files = {"test_a.py": "x = 1", "test_bench.py": "requires_cuda", "test_z.py":
             "@requires_cuda\ndef test(): pass", "sub/test_m.py": "pytest.mark.gpu"}
    for name, text in files.items():
        (tmp_path / "tests" / name).write_text(text)
    (tmp_path / "tests" / "helper.py").write_text("requires_cuda")
    assert gpu_check.test_files(tmp_path) == ["tests/sub/test_m.py", "tests/test_z.py",
                                              "tests/test_a.py", "tests/test_bench.py"]


def test_cli_rejects_bad_arguments():
    for argv in (["--budget", "0"], ["--device", "cpu"], ["--skip", "nope"],
                 ["--inprocess"]):  # in-process on a GPU: no per-stage timeout
        with pytest.raises(SystemExit):
            gpu_check.parse_args(argv)
    with pytest.raises(SystemExit):
        entropy.parse_args(["--shapes", "12by4"])
    with pytest.raises(SystemExit):
        entropy.parse_args(["--timing", "eager,cuda"])
    args = entropy.parse_args(["--shapes", "64x32@3", "16x8", "--mu", "2", "--device", "cpu"])
    assert args.shapes == [(64, 32, 3.0), (16, 8, 2.0)] and args.m == [16, 64]
    assert args.timing == ["eager"]


def test_graph_timing_is_guarded_on_the_cpu():
    x = torch.ones(4, 3)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        common.time_graph(lambda h: h.sum(), x, torch.device("cpu"), warmup=1, reps=2)
    args = types.SimpleNamespace(warmup=1, reps=2)
    row = entropy.graph_row(lambda h: (h.sum(), None), x, args, torch.device("cpu"))
    assert row == {"graph_status": "skipped", "graph_reason": "CUDA graphs need a CUDA device"}


@pytest.mark.parametrize("limit", [None, 0.0])
def test_entropy_graph_fields_and_time_limit(tmp_path, limit):
    argv = ["--quick", "--dtype", "bf16", "--device", "cpu", "--shapes", "40x24@3", "--providers", "reference", "--estimator",
            "exact", "--mode", "fwd", "--timing", "eager,graph", "--reps", "2", "--warmup", "0",
            "--no-progress", "--out", str(tmp_path)]
    args = entropy.parse_args(argv + ([] if limit is None else ["--time-limit", str(limit)]))
    json_path, csv_path = entropy.run(args)
    (row,) = json.loads(json_path.read_text())["results"]
    assert row["mu"] == 3.0 and (row["m"], row["d"]) == (40, 24)
    if limit is None:
        assert row["status"] == "ok" and row["reps"] == 2
        assert row["graph_status"] == "skipped" and "CUDA" in row["graph_reason"]
        gen = torch.Generator().manual_seed(0)
        h = entropy.features(40, 24, "anisotropic", gen).to(torch.bfloat16).double().numpy()
        assert row["value"] == pytest.approx(ind.tcr_exact(h, 3.0), rel=1e-4)
    else:
        assert row["status"] == "skipped" and "time limit" in row["reason"]
        assert row["reps"] == 0 and row["value"] is None
    assert "graph_median_ms" in csv_path.read_text().splitlines()[7]


def test_train_time_limit_skips_the_rest(tmp_path):
    args = train.parse_args(["--quick", "--no-progress", "--out", str(tmp_path),
                             "--time-limit", "0"])
    json_path, _ = train.run(args)
    rows = json.loads(json_path.read_text())["results"]
    assert len(rows) == 4 and all(r["status"] == "skipped" and "time limit" in r["reason"]
                                  for r in rows)


def _row(provider, m, d, mu, ms, estimator="exact", graph=None, floor=None):
    return {"provider": provider, "estimator": estimator, "m": m, "d": d, "mu": mu,
            "dtype": "bf16", "mode": "fwd+bwd", "status": "ok", "median_ms": ms,
            "graph_median_ms": graph, "floor_ms": floor, "_file": "entropy-x.json",
            "_meta": {"device_name": "GPU", "git": {"commit": "abcdef123456", "dirty": True},
                      "device": "cuda", "date": "2026"}}


def test_targets_from_rows():
    rows = [_row("official", 1024, 1024, 3.0, 3.0), _row("cholesky", 1024, 1024, 3.0, 2.0),
            _row("official-compile", 1024, 1024, 3.0, 2.5),
            _row("cholesky-compile", 1024, 1024, 3.0, 1.5),
            _row("cuda", 1024, 1024, 3.0, 0.5, graph=0.2),
            _row("cuda", 1024, 1024, 3.0, 0.1, "series", graph=0.05),
            _row("cuda", 1024, 1024, 3.0, 0.01, "taylor"),  # never counted
            _row("cuda", 65536, 1024, 1.0, 4.0, floor=0.5), _row("official", 65536, 1024, 1.0, 6)]
    got = {(t["target"].split(" (")[0].split(" vs")[0], t["target"].split("`")[-2]
            if "`" in t["target"] else "", t["shape"]): t for t in targets.entropy_targets(rows)}
    head = "1024×1024, μ 3"
    assert got[("ours", "official", head)]["ratio"] == pytest.approx(30.0)
    assert got[("ours", "official", head)]["graph_ratio"] is None  # official has no graph time
    assert got[("ours", "official", head)]["met"] is True
    assert got[("ours", "cholesky", head)]["ratio"] == pytest.approx(20.0)
    assert got[("ours", "cholesky-compile", head)]["ratio"] == pytest.approx(15.0)
    assert got[("exact", "official", head)]["ratio"] == pytest.approx(6.0)
    floor = got[("ours", "", "65536×1024, μ 1")]
    assert floor["ratio"] == pytest.approx(8.0) and floor["met"] is False
    assert "abcdef12+dirty" in floor["source"] and "entropy-x.json" in floor["source"]
    assert len(got) == 5  # 65536 is not a head shape: no 30x / 10x / 2x lines there
    train_rows = [dict(model="vit-b16", batch=256, img_size=224, compiled=False, variant="ours",
                       reg=reg, backend=b, status="ok", img_per_s=v, _file="train-x.json",
                       _meta=rows[0]["_meta"])
                  for reg, b, v in (("none", None, 1000.0), ("tcr", "auto", 996.0),
                                    ("tcr", "official-eager", 900.0))]
    (t,) = targets.train_targets(train_rows)
    assert t["ratio"] == pytest.approx(99.6) and t["met"] is True and "b256 eager" in t["shape"]


def test_plot_merge_keeps_mu_apart_and_ok_rows(tmp_path):
    meta = {"device": "cuda", "device_name": "GPU", "date": "2026-01-01"}
    base = {k: None for k in entropy.CSV_FIELDS}
    mk = lambda mu, status: base | dict(provider="cuda", estimator="exact", m=8, d=4,  # noqa
                                        dtype="bf16", mode="fwd+bwd", mu=mu, status=status)
    for i, rows in enumerate(([mk(1.0, "ok"), mk(3.0, "ok")], [mk(3.0, "skipped")])):
        (tmp_path / f"entropy-{i}.json").write_text(json.dumps(
            {"meta": meta | {"date": f"2026-01-0{i + 1}"}, "results": rows}))
    rows, _ = plot.merged_entropy(tmp_path)
    assert sorted((r["mu"], r["status"]) for r in rows) == [(1.0, "ok"), (3.0, "ok")]


CONFTEST_TEST = '''
import pytest
from conftest import requires_cuda

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no gpu here")
def test_marked_gpu():
    pass

@requires_cuda
def test_requires_cuda():
    pass

@pytest.mark.skipif(True, reason="cpu-only reason")
def test_other_skip():
    pass

def test_runs():
    pass
'''


def test_require_gpu_turns_gpu_skips_into_failures(tmp_path):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(CONFTEST_TEST)
    env = {**__import__("os").environ, "MMAE_FAST_REQUIRE_GPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rA", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # a skipif skips in setup, so the converted report is a setup failure: an "error"
    assert "1 passed, 1 skipped" in out and "2 errors" in out, out
    assert "ERROR test_x.py::test_marked_gpu" in out and "ERROR test_x.py::test_requires_cuda" \
        in out and "MMAE_FAST_REQUIRE_GPU=1" in out


FAKE_PYTHON = '''#!{python}
"""Stands in for the GPU machine's python3: pip, the backends probe, pytest, the benches."""
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["-m", "pip"]:
    print("building for", os.environ["TORCH_CUDA_ARCH_LIST"], "jobs", os.environ["MAX_JOBS"])
    sys.exit(int(os.environ.get("FAKE_PIP_RC", "0")))
if sys.argv[1:3] == ["-m", "pytest"]:
    assert os.environ["MMAE_FAST_REQUIRE_GPU"] == "1"
    print("tests/ops/test_cuda_backend.py::test_a PASSED [ 50%]")
    print("tests/ops/test_cuda_backend.py::test_b FAILED [100%]")
    print("FAILED tests/ops/test_cuda_backend.py::test_b - AssertionError")
    print("1 failed, 1 passed in 0.50s")
    sys.exit(1)
if sys.argv[1] == "-c" and "common.environment" in sys.argv[2]:
    print(json.dumps({{"device": "cuda", "device_name": "Fake GPU", "device_slug": "cuda-fake",
                      "device_properties": {{"capability": "9.0", "sm_count": 132}},
                      "torch": "x", "cuda": "13.0", "triton": "y", "driver": "z",
                      "git": {{"commit": "c0ffee", "dirty": False}}, "date": "2026"}}))
    sys.exit(0)
if sys.argv[1].endswith(".py") and "bench" in sys.argv[1]:  # a bench script: one result file
    name = os.path.basename(sys.argv[1])[:-3].replace("kernel_table", "kernels")
    if name == "plot":
        assert sys.argv[3] == "--readme"
        open(sys.argv[4], "w").write("tables")
    else:
        out = os.path.join(sys.argv[sys.argv.index("--out") + 1], "cuda-fake")
        os.makedirs(out, exist_ok=True)
        stamp = str(len(open(os.environ["FAKE_LOG"]).read().splitlines()))
        with open(os.path.join(out, name + "-" + stamp + ".json"), "w") as fh:
            json.dump({{"results": [{{"status": "ok"}}]}}, fh)
    sys.exit(0)
if sys.argv[1] == "-c":
    found = os.environ["FAKE_BACKENDS"].split(",")
    print(json.dumps({{"available": found, "why": {{n: None if n in found else n + " is not built"
                                                   for n in ("cuda", "triton")}}}}))
'''


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """A context on "cuda" whose python is FAKE_PYTHON; returns (ctx, argv lists so far)."""
    exe = tmp_path / "python3"
    exe.write_text(FAKE_PYTHON.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_BACKENDS", "cuda,triton,reference")
    ctx = gpu_check.Context(types.SimpleNamespace(device="cuda", smoke=False, skip=set()),
                            str(exe), tmp_path / "out", "T",
                            env={"device_slug": "cuda-fake", "device_properties":
                                 {"capability": "9.0"}})
    calls = lambda: [json.loads(line) for line in log.read_text().splitlines()]  # noqa: E731
    return ctx, calls


def test_build_stage_builds_for_this_arch_and_checks_backends(fake_gpu, monkeypatch):
    ctx, calls = fake_gpu
    res = gpu_check.stage_build(ctx, 60)
    assert res["status"] == "ok" and "sm_90" in res["detail"], res
    assert calls()[0] == ["-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    assert "building for 9.0 jobs 16" in Path(res["files"][0]).read_text()
    monkeypatch.setenv("FAKE_BACKENDS", "triton,reference")
    res = gpu_check.stage_build(ctx, 60)
    assert res["status"] == "failed" and "!!! BUILD CHECK FAILED" in res["detail"]
    assert "cuda is not built" in res["detail"]
    monkeypatch.setenv("FAKE_PIP_RC", "1")
    res = gpu_check.stage_build(ctx, 60)
    assert res["status"] == "failed" and "BUILD FAILED (rc 1" in res["detail"]
    ctx.env = {}
    assert gpu_check.stage_build(ctx, 60)["status"] == "failed"  # no capability known


def test_tests_stage_runs_the_suite_gpu_first(fake_gpu):
    ctx, calls = fake_gpu
    res = gpu_check.stage_tests(ctx, 60)
    assert res["status"] == "failed" and res["counts"] == {"failed": 1, "passed": 1}
    assert res["failures"] == ["FAILED tests/ops/test_cuda_backend.py::test_b - AssertionError"]
    (argv,) = [a for a in calls() if a[:2] == ["-m", "pytest"]]
    assert argv[:3] == ["-m", "pytest", "-v"] and argv[-len(gpu_check.test_files()):] == \
        gpu_check.test_files()
    assert Path(res["files"][0]).name == "gpu-tests-T.log"


def test_xdist_workers_only_where_xdist_imports(tmp_path):
    """The GPU suite runs on several pytest-xdist workers where the interpreter has xdist (the
    GPU image), on one process elsewhere."""
    has = tmp_path / "has-xdist"
    has.write_text("#!/bin/sh\nexit 0\n")
    has.chmod(0o755)
    lacks = tmp_path / "no-xdist"
    lacks.write_text("#!/bin/sh\nexit 1\n")
    lacks.chmod(0o755)
    assert gpu_check.xdist_workers(str(has)) == min(8, os.cpu_count() or 1)
    assert gpu_check.xdist_workers(str(lacks)) == 0
    assert gpu_check.xdist_workers(str(tmp_path / "missing")) == 0


def test_entropy_stage_gpu_runs(fake_gpu):
    ctx, calls = fake_gpu
    res = gpu_check.stage_entropy(ctx, 100)
    assert res["status"] == "ok", res
    eager, products, compiled = calls()
    for argv in (eager, products, compiled):
        assert argv[0].endswith("bench/entropy.py")
        assert argv[argv.index("--shapes") + 1:][:4] == list(gpu_check.FOCUSED)
        assert argv[argv.index("--timing") + 1] == "eager,graph"
        assert 1 <= float(argv[argv.index("--time-limit") + 1]) < 100
    def providers(argv):
        rest = argv[argv.index("--providers") + 1:]
        return [a for a in rest[:next(i for i, a in enumerate(rest) if a.startswith("--"))]]
    assert providers(eager) == ["official", "cholesky", "triton", "cuda"]
    assert providers(products) == ["triton", "cuda"]
    assert products[products.index("--small-products") + 1] == "tf32x3"
    assert "--small-products" not in eager and "--small-products" not in compiled
    assert providers(compiled) == ["official-compile", "cholesky-compile"]


def test_partial_when_the_time_limit_cut_rows(tmp_path):
    rows = [{"status": "ok"}, {"status": "skipped", "reason": "time limit: --time-limit 5 s"}]
    (tmp_path / "entropy-x.json").write_text(json.dumps({"results": rows}))
    res = gpu_check._bench_result({"rc": 0, "timed_out": False, "seconds": 1.0}, tmp_path,
                                  set(), "sweep")
    assert res["status"] == "partial" and res["rows"]["time_limit"] == 1
    assert "1/2 rows ok" in res["detail"]
    merged = gpu_check._merge([{"status": "ok", "detail": "a"},
                               {"status": "skipped", "detail": "b"}])
    assert merged["status"] == "partial" and not gpu_check.passed([merged | {"stage": "x"}])


def test_whole_gpu_run_with_a_stand_in_python(fake_gpu, tmp_path, capsys):
    """``make gpu-check`` on "cuda" end to end, every tool replaced by FAKE_PYTHON: every stage
    runs in order, the summary and the export hold them, the table is printed last."""
    ctx, calls = fake_gpu
    out, export = tmp_path / "results", tmp_path / "export"
    rc = gpu_check.main(["--python", ctx.python, "--out", str(out), "--export", str(export),
                         "--budget", "400"])
    printed = capsys.readouterr().out
    (summary,) = (out / "cuda-fake").glob("gpu-check-*.json")
    payload = json.loads(summary.read_text())
    assert [s["stage"] for s in payload["stages"]] == [s.name for s in gpu_check.STAGES]
    status = {s["stage"]: s["status"] for s in payload["stages"]}
    assert status == {"env": "ok", "build": "ok", "tests": "failed", "entropy": "ok",
                      "kernels": "ok", "train": "ok", "report": "ok"}
    assert rc == 1 and payload["passed"] is False and payload["complete"] is True
    assert payload["meta"]["device_name"] == "Fake GPU"
    scripts = [Path(c[0]).name for c in calls() if c[0].endswith(".py")]
    assert scripts == ["entropy.py", "entropy.py", "entropy.py", "kernel_table.py", "train.py",
                       "train.py", "train.py", "plot.py"]
    assert printed.rstrip().splitlines()[-1].startswith("| report | ok |")
    exported = sorted(p.name for p in (export / "results" / "cuda-fake").iterdir())
    assert summary.name in exported and "gpu-tests-" + summary.stem[10:] + ".log" in exported
    assert (export / "results" / "README.md").read_text() == "tables"
