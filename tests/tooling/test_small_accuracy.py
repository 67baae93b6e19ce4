"""bench/small_accuracy.py: one row per (kappa, n, kind, format) with the errors of the
products-only small side and of the forms it replaces against float64 eigenvalues, in JSON and
CSV with the run's metadata; its flag checks."""
import csv
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import small_accuracy  # noqa: E402


def test_rows_and_what_they_show(tmp_path):
    """At kappa 257 the moments keep the exact contract in tf32x3 and are closer than the plain
    traces of the same polynomial; every error column is a finite non-negative number."""
    assert small_accuracy.main(["--kappa", "257", "--n", "37", "--kind", "collapsed",
                                "--format", "float32", "tf32x3", "--no-progress",
                                "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*/small-accuracy-*.json")
    data = json.load(open(path))
    assert data["schema"] == small_accuracy.SCHEMA and "commit" in data["meta"]["git"]
    rows = data["results"]
    assert [(r["kappa"], r["n"], r["kind"], r["format"]) for r in rows] == [
        (257.0, 37, "collapsed", "float32"), (257.0, 37, "collapsed", "tf32x3")]
    for r in rows:
        assert r["degree"] == 125 and r["products"] == 21 and r["steps"] == 8
        for key in ("moments", "plain_traces", "cholesky", "complement", "float32_inverse",
                    "float32_complement"):
            assert 0.0 <= r[key] < 1e-3, (key, r[key])
        assert r["moments"] <= 1e-5 and r["moments"] < r["plain_traces"]
        # the cpu backend's float32 form keeps W's digits that I - inv32(A) loses
        assert r["float32_complement"] < r["float32_inverse"] / 2
    (table,) = tmp_path.glob("*/small-accuracy-*.csv")
    lines = [line for line in open(table) if not line.startswith("#")]
    assert [row["format"] for row in csv.DictReader(lines)] == ["float32", "tf32x3"]


@pytest.mark.parametrize("argv,message", [(["--kappa", "1"], "--kappa must be > 1"),
                                          (["--n", "1"], "--n must be >= 2"),
                                          (["--threads", "0"], "--threads must be >= 1")])
def test_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        small_accuracy.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
