"""The package's layers: the library never imports the application, no module imports a layer
above its own (docs/architecture.md)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mmae_fast"

#: (module prefix, layer): a module may import its own layer and those below (smaller numbers)
LAYERS = [
    ("mmae_fast.reference", 0), ("mmae_fast.series", 0), ("mmae_fast._checks", 0),
    ("mmae_fast.ops", 1),
    ("mmae_fast.backends", 2), ("mmae_fast.distributed", 2), ("mmae_fast.baselines", 2),
    ("mmae_fast.functional", 3), ("mmae_fast.nn", 3), ("mmae_fast", 3),
    ("mmae_fast.mae", 4),
    ("mmae_fast.train", 5), ("mmae_fast.eval", 5),
    ("mmae_fast.train.demo", 6),
    ("mmae_fast.bench_cli", 6),
]


def _layer(module: str) -> int:
    matches = [(len(p), layer) for p, layer in LAYERS if module == p or module.startswith(p + ".")]
    assert matches, f"{module}: add it to LAYERS"
    return max(matches)[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str):
    """The mmae_fast modules ``path`` imports (absolute and relative, at any depth)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mmae_fast"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mmae_fast"):
                # "from pkg import sub" imports pkg.sub where sub is a module
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    exists = any((PACKAGE.parent / (sub.replace(".", "/") + ext)).exists()
                                 for ext in (".py", "/__init__.py"))
                    yield sub if exists else target


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for target in _imports(path, module):
            if target != "mmae_fast" and _layer(target) > _layer(module):
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: a relative import from the op into the trainer is found and is up."""
    fake = tmp_path / "op.py"
    fake.write_text("from ...train import loop\nfrom . import stages\n")
    found = list(_imports(fake, "mmae_fast.ops.tcr.op"))
    assert found == ["mmae_fast.train.loop", "mmae_fast.ops.tcr.stages"]
    assert _layer(found[0]) > _layer("mmae_fast.ops.tcr.op") == _layer(found[1])


@pytest.mark.parametrize("what", ["mmae_fast", "mmae_fast.functional", "mmae_fast.distributed"])
def test_importing_the_library_loads_no_application_module(what):
    out = subprocess.run([sys.executable, "-c", f"import sys, {what}; print(sorted(m for m in "
                          f"sys.modules if m.split('.')[:2][-1] in ('mae', 'train', 'eval') "
                          f"and m.startswith('mmae_fast.')))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
