"""``mmae-bench``: the console entry point of the benchmarks in the repository's ``bench/``.

    mmae-bench entropy --quick        # = python bench/entropy.py --quick
    mmae-bench entropy --quick --loss uniformity
    mmae-bench train --quick          # = python bench/train.py --quick
    mmae-bench plot                   # = python bench/plot.py

The benchmarks are repository tools (they write result files into ``bench/results/`` of the
checkout), not part of the installed package, so this entry point needs the package installed
from a source checkout (``pip install -e .``, as ``make install`` does).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

COMMANDS = {"entropy": "the TCR regulariser microbenchmark (bench/entropy.py; --loss "
                       "uniformity: U-MAE's loss)",
            "train": "trainer throughput (bench/train.py)",
            "plot": "plots and bench/README.md tables from the result files (bench/plot.py)"}


def _usage() -> str:
    lines = ["usage: mmae-bench {%s} [options]" % ",".join(COMMANDS), ""]
    lines += [f"  {name:8s} {what}" for name, what in COMMANDS.items()]
    lines += ["", "`mmae-bench <command> --help` lists the options of each."]
    return "\n".join(lines)


def repository_root() -> Path:
    """The source checkout holding ``bench/`` next to this package; a ValueError otherwise."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "entropy.py").is_file():
        raise ValueError(
            f"no bench/ folder next to the installed package ({root}): the benchmarks live in "
            "the source repository; clone it and install it editable (pip install -e .), or "
            "run python bench/entropy.py from the checkout")
    return root


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mmae-bench: error: unknown command {command!r}; choose one of "
              f"{', '.join(COMMANDS)} (mmae-bench --help lists them)", file=sys.stderr)
        return 2
    try:
        root = str(repository_root())
    except ValueError as exc:
        print(f"mmae-bench: error: {exc}", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{command}")
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
