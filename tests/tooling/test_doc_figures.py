"""Every measured figure in README.md, docs/*.md and bench/NOTES.md names the result file it
comes from, and matches it.

The rule for a doc writer:

- A paragraph (text between blank lines: a table, a list item, a fenced block) that states
  measured figures names its result files as ``bench/results/<device>/<file>`` (in backticks
  or as a link), in itself or in the paragraph just before it (a table's caption).
- Every decimal number of such a paragraph (``0.623``, ``2.6 ms``) and every number with a unit
  (``44 µs``, ``1349 img/s``, ``145 MB``; not ``32 MiB``, a size the code fixes) must occur in one of the files named, to the precision
  printed (a number of the file that rounds to it, in the same unit or scaled by 10³, 2²⁰ or
  10⁶ / 10⁹ for ms <-> µs <-> s and bytes). Not checked: numbers in backticks (code, tolerances),
  ratios written ``4.5x`` (quotients of figures beside them), numbers of a ``1e-4`` form, and a
  figure right after ``=`` or ``≈`` (arithmetic on the figures beside it).
- A number with a time, throughput or memory unit (``UNITS``) in a paragraph that names no
  result file fails the test: name the file or remove the figure.
"""
import bisect
import math
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "NOTES.md"]
SOURCE = re.compile(r"bench/results/[\w.+-]+/[\w.+-]+\.(?:json|csv|txt|log|md)")
#: time, throughput and measured memory (decimal MB / GB); MiB / GiB are sizes the code fixes
UNITS = r"(?:ms|µs|us|s|img/s|MB|GB|H100-hours)"
WITH_UNIT = re.compile(rf"(?<![\w.])(?<![=≈] )(\d+(?:\.\d+)?)\s?{UNITS}(?![\w/])")
DECIMAL = re.compile(r"(?<![\w.^])(?<![=≈] )(\d+\.\d+)(?![\d.]|e[-+]?\d|x\b|\s?x\b|[\w])")
SCALES = (1.0, 1e-3, 1e3, 1e-6, 1e6, 2.0 ** 20, 1e9, 2.0 ** 30)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; a fenced block is one paragraph."""
    out, cur, fence = [], [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fence = not fence
        if not line.strip() and not fence:
            if cur:
                out.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def _plain(par: str) -> str:
    """The paragraph without inline code, links' targets and result-file names."""
    par = SOURCE.sub(" ", par)
    par = re.sub(r"\]\([^)]*\)", "]", par)
    return re.sub(r"`[^`\n]*`", " ", par)


_NUMBERS: dict[pathlib.Path, list[float]] = {}


def _numbers(path: pathlib.Path) -> list[float]:
    if path not in _NUMBERS:
        vals = (float(v) for v in NUMBER.findall(path.read_text(errors="replace")))
        _NUMBERS[path] = sorted(v for v in vals if math.isfinite(v))
    return _NUMBERS[path]


def _occurs(figure: str, files: list[pathlib.Path]) -> bool:
    value = float(figure)
    half = 0.5 * 10.0 ** -(len(figure.split(".")[1]) if "." in figure else 0)
    for path in files:
        nums = _numbers(path)
        for scale in SCALES:
            lo, hi = (value - half) * scale, (value + half) * scale
            i = bisect.bisect_left(nums, lo * (1 - 1e-12))
            if i < len(nums) and nums[i] <= hi * (1 + 1e-12):
                return True
    return False


def _cases():
    cases = []
    for doc in DOCS:
        pars = _paragraphs(doc.read_text())
        for k, par in enumerate(pars):
            named = SOURCE.findall(par) + (SOURCE.findall(pars[k - 1]) if k else [])
            cases.append((doc.relative_to(ROOT), par, named))
    return cases


CASES = _cases()


def test_figures_name_their_result_file():
    bad = [f"{doc}: {m.group(0)!r} in: {par[:120]!r}"
           for doc, par, named in CASES if not named
           for m in WITH_UNIT.finditer(_plain(par))]
    assert not bad, "figures without a result file (name it or remove the figure):\n" + \
        "\n".join(bad)


def test_named_result_files_exist():
    missing = sorted({f"{doc}: {name}" for doc, _par, named in CASES for name in named
                      if not (ROOT / name).is_file()})
    assert not missing, missing


@pytest.mark.parametrize("doc", sorted({c[0] for c in CASES}), ids=str)
def test_figures_match_their_result_file(doc):
    bad = []
    for d, par, named in CASES:
        files = [ROOT / n for n in dict.fromkeys(named) if (ROOT / n).is_file()]
        if d != doc or not files:
            continue
        plain = _plain(par)
        figures = {m.group(1) for m in WITH_UNIT.finditer(plain)} | set(DECIMAL.findall(plain))
        bad += [f"{figure} (in {par[:100]!r}) is in none of {[str(n) for n in named]}"
                for figure in sorted(figures) if not _occurs(figure, files)]
    assert not bad, "\n".join(bad)


def test_the_check_reports_a_figure_the_file_does_not_hold(tmp_path):
    """The matching rule itself: a printed figure matches a file's number at its precision
    (also scaled ms -> µs), and a figure one digit off is reported."""
    src = tmp_path / "r.csv"
    src.write_text("median_ms,peak\n0.6234,144967680\n")
    assert _occurs("0.623", [src]) and _occurs("623", [src]) and _occurs("145", [src])
    assert not _occurs("0.624", [src]) and not _occurs("0.62345", [src])
    par = "the series: 0.624 ms and 2.1x (`bench/results/x/r.csv`)"
    assert {m.group(1) for m in WITH_UNIT.finditer(_plain(par))} == {"0.624"}
    assert set(DECIMAL.findall(_plain(par))) == {"0.624"}
